"""The OpenCL target: generated OpenCL C kernels for pattern-sparse (and dense) CNNs, run from
Python through pyopencl (an optional dependency: ``pip install 'patsparse[opencl]'``).

    fast = ps.compile(model, example_input, target="opencl")   # or target=opencl_target("NVIDIA")
    y = fast(x)
    fast.save("model.ocl"); fast = ps.load("model.ocl")   # built for the device at hand
"""

from .api import build_opencl
from .device import OpenCLDevice, opencl_target
from .files import is_opencl_dir, load
from .runtime import OpenCLModel

__all__ = ["OpenCLDevice", "OpenCLModel", "build_opencl", "is_opencl_dir", "load", "opencl_target"]
