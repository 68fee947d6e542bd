"""Engine registry: command-line name -> module defining ``ENGINE``.

Order is the table order. A name of the form ``package.module:attribute`` loads any other
engine object (how a user adds their own, and how the tests add a deliberately broken one).
"""

from __future__ import annotations

import importlib

from ...errors import InputError
from .base import Engine, Runner

ENGINES: dict[str, str] = {
    "patsparse": "patsparse_engine",
    "torch": "torch_eager",
    "torch-compile": "torch_compile",
    "onnxruntime": "onnxruntime_engine",
    "openvino": "openvino_engine",
    "tvm": "tvm_engine",
    "mnn": "mnn_engine",
    "ncnn": "ncnn_engine",
    "litert": "litert_engine",
    "deepsparse": "deepsparse_engine",
}


def engine_spec(name: str) -> str:
    """The importable ``module:attribute`` of an engine name (what a worker is told to load)."""
    if name in ENGINES:
        return f"{__name__}.{ENGINES[name]}:ENGINE"
    if ":" in name:
        return name
    raise InputError(f"unknown engine {name!r}: choose from {', '.join(ENGINES)} "
                     "(or give package.module:attribute)")


def load_engine(name_or_spec: str) -> Engine:
    spec = engine_spec(name_or_spec)
    module, attr = spec.split(":", 1)
    try:
        engine = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise InputError(f"cannot load engine {name_or_spec!r} from {spec}: {e}") from None
    if not isinstance(engine, Engine):
        raise InputError(f"engine {spec} is a {type(engine).__name__}, not a patsparse.bench Engine")
    return engine


__all__ = ["ENGINES", "Engine", "Runner", "engine_spec", "load_engine"]
