"""The OpenCL target: generated OpenCL C kernels for pattern-sparse (and dense) CNNs, run from
Python through pyopencl (an optional dependency: ``pip install 'patsparse[opencl]'``).

    fast = ps.compile(model, example_input, target="opencl")
    y = fast(x)
    fast.save("model.ocl"); fast = load("model.ocl")   # patsparse.compiler.opencl.load
"""

from .api import build_opencl
from .device import OpenCLDevice
from .files import load
from .runtime import OpenCLModel

__all__ = ["OpenCLDevice", "OpenCLModel", "build_opencl", "load"]
