"""int8 code generation (a QuantizedModel from patsparse.quant -> int8 kernels): quads.py decides how weights become 4-way dot products, kernels.py renders the C, build.py plans, emits and builds."""
