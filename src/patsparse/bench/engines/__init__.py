"""Engine registry: command-line name -> module defining ``ENGINE``.

Order is the table order. A name of the form ``package.module:attribute`` loads any other
engine object (how a user adds their own, and how the tests add a deliberately broken one).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ...errors import InputError, UnsupportedError
from .base import Engine, Runner

if TYPE_CHECKING:
    import numpy as np

    from ..model import BenchModel

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


def prepare_here(names: Sequence[str], model: "BenchModel", x: "np.ndarray", workdir: str | Path, threads: int,
                 options: dict[str, Any] | None = None) -> dict[str, Runner]:
    """The engines ``names`` prepared in this very process on ``model`` with example input ``x``.

    For the kernel and layer benchmarks that time small pieces side by side in one process,
    where a worker's pipe round trip would dwarf the call; whole models go through
    ``harness.run_bench`` instead (a worker per engine, isolated from each other's crashes).
    ``options`` go to every engine, as ``run_bench``'s do.
    """
    from ..worker import ModelFiles

    engines = {name: load_engine(name) for name in names}
    for name, engine in engines.items():
        ok, why = engine.available()
        if not ok:
            raise UnsupportedError(f"engine {name!r} cannot run here: {why}")
    workdir = Path(workdir)
    files = ModelFiles(**model.materialise(workdir / "model", x), _module=model.module)
    runners = {}
    for name, engine in engines.items():
        engine.options = dict(options or {})
        runners[name] = engine.prepare(files, x, workdir / name, threads)
    return runners


__all__ = ["ENGINES", "Engine", "Runner", "engine_spec", "load_engine", "prepare_here"]
