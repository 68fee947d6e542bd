"""The OpenCL device a model is compiled for, as data: what the kernel generators and the
tuner need to know about it, and the checks that turn an unusable device into a clear error.

``OpenCLDevice`` is a frozen dataclass (name, kind="opencl", work-group and memory limits): the
capability group of the "opencl" Target (compiler/target), filled in by ``opencl_target`` when
a device is opened; everything that talks to pyopencl lives in ``open_device``. pyopencl is an
optional dependency (``pip install patsparse[opencl]``): it is imported only here and in the
runtime, and its absence is an error that says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from ...errors import InputError, UnsupportedError
from ..target import Target, get_target

CL_FP_INF_NAN = 1 << 1
CL_FP_ROUND_TO_NEAREST = 1 << 2
DEVICE_ENV = "PATSPARSE_OPENCL_DEVICE"


@dataclass(frozen=True)
class OpenCLDevice:
    """One OpenCL device's limits, read from the driver.

    ``device_type`` is "gpu", "cpu" or "accelerator": the default schedules stage input tiles in
    local memory only on a GPU, where local memory is on-chip; on a CPU device (PoCL) it is
    ordinary cached memory and the extra barriers only cost.
    """

    name: str
    platform: str
    device_type: str
    max_work_group_size: int
    max_work_item_sizes: tuple[int, int, int]
    local_mem_bytes: int
    global_mem_bytes: int
    max_alloc_bytes: int
    compute_units: int
    fp32_config: int
    kind: str = "opencl"

    @property
    def is_gpu(self) -> bool:
        return self.device_type == "gpu"

    @property
    def preferred_group_size(self) -> int:
        """Work-items per group in default schedules: on a GPU few enough for a common GPU's
        register file to hold them; on a CPU device enough for PoCL to vectorise a group's loop."""
        return min(self.max_work_group_size, 128 if self.is_gpu else 256)

    def describe(self) -> str:
        return f"{self.name!r} ({self.device_type}, platform {self.platform!r})"


def import_pyopencl() -> Any:
    """pyopencl, or an UnsupportedError saying how to get it."""
    try:
        import pyopencl
    except ImportError as e:
        raise UnsupportedError("target 'opencl' needs pyopencl: pip install 'patsparse[opencl]' "
                               f"(and an OpenCL driver, e.g. Debian's pocl-opencl-icd): {e}") from None
    return pyopencl


def _type_name(cl: Any, t: int) -> str:
    for name in ("gpu", "cpu", "accelerator"):
        if t & getattr(cl.device_type, name.upper()):
            return name
    return "other"


def describe_device(cl_device: Any) -> OpenCLDevice:
    """The data of a pyopencl device."""
    cl = import_pyopencl()
    sizes = tuple(int(s) for s in cl_device.max_work_item_sizes)[:3]
    return OpenCLDevice(name=cl_device.name.strip(), platform=cl_device.platform.name.strip(),
                        device_type=_type_name(cl, cl_device.type),
                        max_work_group_size=int(cl_device.max_work_group_size),
                        max_work_item_sizes=sizes + (1,) * (3 - len(sizes)),
                        local_mem_bytes=int(cl_device.local_mem_size),
                        global_mem_bytes=int(cl_device.global_mem_size),
                        max_alloc_bytes=int(cl_device.max_mem_alloc_size),
                        compute_units=int(cl_device.max_compute_units),
                        fp32_config=int(cl_device.single_fp_config))


def list_devices() -> list[Any]:
    """Every OpenCL device of every platform, GPUs first; UnsupportedError when there is none."""
    cl = import_pyopencl()
    try:
        platforms = cl.get_platforms()
    except cl.Error as e:  # the ICD loader reports "no platform" as an error
        platforms = []
        why = str(e)
    else:
        why = "no platform registered"
    devices = [d for p in platforms for d in p.get_devices()]
    if not devices:
        raise UnsupportedError(f"target 'opencl': no OpenCL platform or device found ({why}); install a "
                               "driver (GPU vendor ICD, or Debian's pocl-opencl-icd for a CPU device) "
                               "and check with `clinfo`")
    return sorted(devices, key=lambda d: not (d.type & cl.device_type.GPU))


def open_device(spec: str | int | None = None) -> Any:
    """The pyopencl device named by ``spec``: an index into ``list_devices()``, a substring of
    the device or platform name, or None for $PATSPARSE_OPENCL_DEVICE, else the first GPU, else
    the first device. Checks that it computes IEEE float32 (see ``check_fp32``)."""
    devices = list_devices()
    spec = os.environ.get(DEVICE_ENV) if spec is None else spec
    if spec is None or spec == "":
        dev = devices[0]
    elif isinstance(spec, int) or str(spec).isdigit():
        i = int(spec)
        if not 0 <= i < len(devices):
            raise InputError(f"OpenCL device index {i} out of range: {len(devices)} device(s) found")
        dev = devices[i]
    else:
        hits = [d for d in devices if str(spec).lower() in f"{d.platform.name} {d.name}".lower()]
        if not hits:
            names = ", ".join(repr(d.name.strip()) for d in devices)
            raise InputError(f"no OpenCL device matches {spec!r}; found {names}")
        dev = hits[0]
    check_fp32(describe_device(dev))
    return dev


def opencl_target(device: str | int | None = None) -> Target:
    """The "opencl" Target for the device ``device`` names (see ``open_device``), its facts in
    ``target.opencl``: ``compile(model, x, target=opencl_target("NVIDIA"))`` picks a device."""
    return replace(get_target("opencl"), opencl=describe_device(open_device(device)))


def target_device(target: Target) -> Any:
    """The pyopencl device an "opencl" Target stands for: the device whose facts it holds, or,
    for the registry entry (no facts), the default device of ``open_device``."""
    if target.kind != "opencl":
        raise InputError(f"target {target.name!r} ({target.kind}) is not an OpenCL target")
    if target.opencl is None:
        return open_device()
    hits = [d for d in list_devices() if describe_device(d) == target.opencl]
    if not hits:
        raise UnsupportedError(f"OpenCL device {target.opencl.describe()} of target {target.name!r} "
                               "is not present here")
    return hits[0]


def check_fp32(device: OpenCLDevice) -> None:
    """UnsupportedError unless the device does float32 with round-to-nearest and inf/NaN, which
    the kernels (and the 1e-4 agreement with PyTorch) assume."""
    need = CL_FP_ROUND_TO_NEAREST | CL_FP_INF_NAN
    if device.fp32_config & need != need:
        raise UnsupportedError(f"OpenCL device {device.describe()} does not support IEEE float32 "
                               f"(CL_DEVICE_SINGLE_FP_CONFIG = {device.fp32_config:#x}: needs "
                               "round-to-nearest and inf/NaN); the OpenCL target computes in float32")


def check_memory(device: OpenCLDevice, buffers: dict[str, int], what: str) -> None:
    """UnsupportedError when ``buffers`` (name -> bytes) do not fit the device: one of them above
    its largest allocation, or all together above its global memory. ``what`` says whose."""
    mib = 1 << 20
    for name, size in buffers.items():
        if size > device.max_alloc_bytes:
            raise UnsupportedError(f"{what}: the {name} buffer needs {size / mib:.1f} MiB, above the "
                                   f"largest allocation of OpenCL device {device.describe()} "
                                   f"({device.max_alloc_bytes / mib:.1f} MiB)")
    total = sum(buffers.values())
    if total > device.global_mem_bytes:
        raise UnsupportedError(f"{what}: needs {total / mib:.1f} MiB of device memory, OpenCL device "
                               f"{device.describe()} has {device.global_mem_bytes / mib:.1f} MiB")
