"""int8 inference: ``quantize`` a float model into a PyTorch simulation of the integer arithmetic
(``QuantizedModel``), then ``patsparse.compile`` it into int8 kernels.

    q = ps.quantize(model, calibration_loader)   # float in, float out; computes what int8 kernels do
    q.save("model.q"); q = patsparse.quant.load_quantized("model.q")
    fast = ps.compile(q, example_input)          # generated int8 kernels, same codes as q
"""

from .model import INT8_OPS, QuantizedModel, load_quantized, quantize

__all__ = ["INT8_OPS", "QuantizedModel", "load_quantized", "quantize"]
