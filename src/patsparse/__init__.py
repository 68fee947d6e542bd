"""patsparse: pattern-based sparsity for convolutional networks.

The flow is prune -> compile -> run::

    import patsparse as ps
    sparse = ps.prune(model, train_loader, rate=8, library="phase2")
    fast = ps.compile(sparse, example_input)
    y = fast(x)                       # same numbers as sparse(x)
    ps.save(sparse, "model.pats"); ps.load("model.pats")
    ps.export(sparse, example_input, "out/", target="aarch64-linux-gnu")  # C project, no Python

Names are imported lazily so that ``import patsparse`` stays cheap and a part that is not
used (say, the compiler on a machine without a C compiler) never gets in the way.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import BuildError, DivergedError, FormatError, InputError, PatsparseError, UnsupportedError

__version__ = "0.1.0"

# public name -> "module:attribute"
_LAZY = {
    "pattern_library": "patsparse.patterns.library:pattern_library",
    "prune": "patsparse.pruning.api:prune",
    "describe": "patsparse.pruning.describe:describe",
    "compile": "patsparse.compiler.api:compile",
    "export": "patsparse.compiler.export:export",
    "save": "patsparse.serialize:save",
    "load": "patsparse.serialize:load",
    "to_onnx": "patsparse.onnx_export:to_onnx",
    "quantize": "patsparse.quant.model:quantize",
}

__all__ = sorted(_LAZY) + ["PatsparseError", "InputError", "FormatError", "UnsupportedError",
                           "BuildError", "DivergedError", "__version__"]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'patsparse' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
