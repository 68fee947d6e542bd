"""Every knob of a pruning run in one dataclass, saved as YAML beside the result.

Why: a pruned model is only reproducible if the exact rate, library, ADMM schedule and learning
rates are kept with it. ``patsparse.prune`` builds a recipe from its keyword arguments (or takes
one), validates it before any training starts, and ``patsparse prune --out DIR`` writes it to
``DIR/recipe.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..checkpoint import atomic_write_bytes
from ..errors import FormatError, InputError


@dataclass
class PruneRecipe:
    """Pattern-aware ADMM pruning settings (defaults: the paper's procedure, scaled to be practical).

    rate: 3x3-conv compression rate (2.25 = patterns only; more adds connectivity pruning).
    library: "phase1" | "phase2" | "phase3" | "candidates" | path to a JSON library.
    admm_iters: ADMM iterations; each runs ``epochs`` SGD epochs (the primal step), then the
        proximal projections and the dual update.
    rho, rho_growth, rho_max: penalty weight, multiplied by rho_growth after every iteration, capped.
    retrain_epochs: masked retraining epochs after hard pruning (cosine learning-rate decay).
    lr, momentum, weight_decay: SGD for the ADMM phase; retrain_lr for retraining (None = lr).
    layers: conv names to prune (None = every 3x3 conv but the first); conv1x1: also prune 1x1
        convs (connectivity only); connectivity_balanced: same kernel count per filter.
    oneshot: project once without training (quick experiments; retrain_epochs still applies).
    bn_batches: training batches used to re-estimate BatchNorm running statistics right after
        hard pruning (0 = off): the pruned convs' outputs shift, and stale statistics made the
        hard-pruned ResNet-8 score 50% instead of 66% in our Fashion-MNIST check.
    """

    rate: float = 8.0
    library: str = "phase2"
    admm_iters: int = 4
    epochs: int = 1
    retrain_epochs: int = 3
    rho: float = 1e-2
    rho_growth: float = 3.0
    rho_max: float = 1.0
    lr: float = 0.01
    retrain_lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    layers: list[str] | None = None
    conv1x1: bool = False
    connectivity_balanced: bool = False
    oneshot: bool = False
    bn_batches: int = 50
    seed: int | None = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "PruneRecipe":
        """Raise InputError naming the first bad knob (before any training time is spent)."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise InputError(f"recipe: {msg}")

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(number(self.rate) and self.rate >= 2.25,
             f"rate must be a number >= 2.25 (patterns alone give 2.25x), got {self.rate!r}")
        need(isinstance(self.library, (str, os.PathLike)), f"library must be a name or a path, got {self.library!r}")
        for k in ("admm_iters", "epochs", "retrain_epochs", "bn_batches"):
            v = getattr(self, k)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 0, f"{k} must be an int >= 0, got {v!r}")
        need(self.oneshot or (self.admm_iters >= 1 and self.epochs >= 1),
             "ADMM needs admm_iters >= 1 and epochs >= 1 (or oneshot=True)")
        for k in ("rho", "rho_max", "lr"):
            v = getattr(self, k)
            need(number(v) and v > 0, f"{k} must be a positive number, got {v!r}")
        need(number(self.rho_growth) and self.rho_growth >= 1, f"rho_growth must be >= 1, got {self.rho_growth!r}")
        need(self.retrain_lr is None or (number(self.retrain_lr) and self.retrain_lr > 0),
             f"retrain_lr must be positive or None, got {self.retrain_lr!r}")
        need(number(self.momentum) and 0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}")
        need(number(self.weight_decay) and self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        need(self.layers is None or (isinstance(self.layers, (list, tuple))
                                     and all(isinstance(x, str) for x in self.layers)),
             f"layers must be a list of conv names or None, got {self.layers!r}")
        return self

    def rho_at(self, iteration: int) -> float:
        """Penalty weight for ADMM iteration ``iteration`` (0-based)."""
        return min(self.rho * self.rho_growth ** iteration, self.rho_max)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["library"] = os.fspath(d["library"])
        return d

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_bytes(path, yaml.safe_dump(self.to_dict(), sort_keys=False).encode())

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> "PruneRecipe":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"{source}: unknown recipe keys {unknown}; known: {sorted(known)}")
        return cls(**data).validate()

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PruneRecipe":
        try:
            with open(path) as f:
                data = yaml.safe_load(f)
        except FileNotFoundError:
            raise FormatError(f"recipe file not found: {path}") from None
        except yaml.YAMLError as e:
            raise FormatError(f"recipe file {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise FormatError(f"recipe file {path} must hold a mapping of knobs, got {type(data).__name__}")
        return cls.from_dict(data, f"recipe file {path}")
