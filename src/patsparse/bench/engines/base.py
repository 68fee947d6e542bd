"""The one interface every engine implements, and what a prepared engine hands back.

An engine lives in two places: ``available()`` runs in the harness (cheap, imports nothing
heavy: it only says whether the engine *could* run and why not), ``prepare()`` runs inside
the engine's own worker process, where a crash or a hang cannot take the benchmark down.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from ..worker import ModelFiles


class Runner:
    """A ready engine: ``runner(x)`` maps a float32 NCHW batch to the model's output.

    ``model_bytes`` is what the engine keeps on disk for this model (its converted file, built
    library, weights); ``notes`` qualifies the figure (e.g. "untuned") and is shown in tables.
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], model_bytes: int, notes: str = "",
                 keep: object = None):
        self._fn = fn
        self.model_bytes = int(model_bytes)
        self.notes = notes
        self._keep = keep  # objects the native engine reads from and that must outlive it

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._fn(x)


class Engine:
    """Base class: set ``name``, ``label``, ``modules``; override ``prepare``."""

    name: str = ""
    label: str = ""
    modules: tuple[str, ...] = ()        # importable in the worker's interpreter
    needs_torch_model: bool = False       # False: works from the ONNX file alone
    install_hint: str = "pip install 'patsparse[peers]'"
    distribution: str = ""                # PyPI name whose version is reported
    options: dict = {}                    # engine options from the command line (set per worker)

    def version(self) -> str:
        """Version of the engine's package as installed where the worker runs."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(self.distribution) if self.distribution else ""
        except PackageNotFoundError:
            return ""

    def python(self) -> str:
        """Interpreter the worker runs in (an engine with its own venv overrides this)."""
        return sys.executable

    def worker_path(self) -> list[str]:
        """sys.path for the worker: the harness's own, so the worker imports the same code."""
        return [p for p in sys.path if p]

    def worker_env(self, options: dict) -> dict[str, str]:
        """Environment variables the worker process starts with (read before any import)."""
        return {}

    def available(self) -> tuple[bool, str]:
        missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if missing:
            return False, f"{', '.join(missing)} not installed ({self.install_hint})"
        return True, ""

    def prepare(self, model: "ModelFiles", example: np.ndarray, workdir: Path,
                threads: int) -> Runner:
        raise NotImplementedError


def venv_dir(name: str) -> Path:
    """Where an engine with its own virtual environment keeps it: $PATSPARSE_CACHE/venvs/NAME."""
    root = os.environ.get("PATSPARSE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "patsparse") / "venvs" / name


def file_bytes(*paths: Path | str) -> int:
    """Total size of the given files and directories (recursively)."""
    total = 0
    for p in map(Path, paths):
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.exists():
            total += p.stat().st_size
    return total


def as_float32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)
