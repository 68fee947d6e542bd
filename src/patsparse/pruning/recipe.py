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
from .admm import geometric_rhos
from .layers import CONV1X1


ALLOCATIONS = ("uniform", "lamp")
ADMM_KNOBS = ("admm_iters", "epochs", "rho", "penalty_reach", "penalty_strength")  # knobs only ADMM reads
DYNAMIC_KNOBS = ("dynamic_reach", "dynamic_every")  # knobs only dynamic masks read
MIN_REACH = 1.0  # below this an ADMM iteration leaves over a third of the distance to Z: an error
MAX_PULL = 0.5  # the strongest per-step pull lr * rho a derived schedule uses (Nesterov is stable to ~1.4)
RETRAIN_LR_FACTOR = 3.0  # retraining restarts at this multiple of lr unless retrain_lr is set (prune_defaults sweep)


def contraction(c: float, momentum: float) -> float:
    """Per-step factor by which Nesterov SGD with ``momentum`` shrinks a weight's distance to a
    fixed target under a quadratic pull of curvature ``c = lr * rho`` alone.

    The distance follows e' = (1+m)(1-c) e - m(1-c) e_prev; the factor is the spectral radius of
    that recurrence. It falls as c grows, slowly past critical damping, c* = ((1-m)/(1+m))^2,
    where it becomes sqrt(m(1-c)) and the weights oscillate around Z as they close in.
    """
    a, b = (1 + momentum) * (1 - c), momentum * (1 - c)
    disc = a * a - 4 * b
    return (a + math.sqrt(disc)) / 2 if disc >= 0 else math.sqrt(b)


def method_for(oneshot: bool | None, given: dict[str, Any]) -> bool | None:
    """``oneshot`` as a caller's explicit knobs imply it: setting an ADMM knob (``given`` holds
    the knobs the caller set, None for unset) asks for ADMM, so an unset ``oneshot`` becomes
    False; an explicit one is kept (a one-shot recipe with ADMM knobs fails validation)."""
    return False if oneshot is None and any(given.get(k) is not None for k in ADMM_KNOBS) else oneshot


@dataclass
class PruneRecipe:
    """Pattern-aware pruning settings: one-shot projection + masked retraining (the default),
    masks re-chosen during the first part of retraining (``dynamic``), or the paper's ADMM before
    retraining (``oneshot=False``).

    rate: compression rate over the pruned layers, dense weights / kept weights over 3x3 and 1x1
        convs together (2.25 = patterns only; more adds connectivity pruning).
    library: "phase1" | "phase2" | "phase3" | "candidates" | path to a JSON library.
    admm_iters: ADMM iterations; each runs ``epochs`` SGD epochs (the primal step), then the
        proximal projections and the dual update.
    steps: the SGD steps a run aims for when ``epochs`` or ``retrain_epochs`` is unset (None):
        all for retraining when ``oneshot``, else half for ADMM and half for retraining, turned
        into whole epochs of the caller's loader (at least one). A loader of a few thousand images
        then gets many passes and a large one few, so the default budget is the same amount of
        optimisation whatever the data size.
    penalty_strength, penalty_reach: the last ADMM iteration's penalty, when ``rho`` is unset.
        Strength is its per-step pull ``lr * rho``: the data gradient holds W about
        grad / rho away from Z, so this sets how close W settles. Reach is how far that
        iteration's SGD steps pull W towards Z: the penalty alone would leave exp(-reach) of the
        distance (see :func:`contraction`). rho is derived from both and the run's own learning
        rate and step count, so the penalty acts the same whether the loader holds 6,000 images
        or 60,000.
    rho, rho_growth, rho_max: an explicit starting penalty weight (overrides penalty_reach),
        multiplied by rho_growth after every iteration, capped at rho_max. With rho unset, the
        derived schedule still grows by rho_growth per iteration towards its final value.
    allocation: how the kernels kept by connectivity pruning are spread over layers:
        "uniform" (the paper: the same fraction in every layer) or "lamp" (one global ranking of
        kernels by layer-normalised energy, LAMP-style, so that redundant layers give up more).
    min_layer_keep: with "lamp", no layer keeps less than this fraction of the uniform share.
    progressive: connectivity tightens gradually instead of at once: over the ADMM iterations
        (the kept fraction shrinks geometrically to its target at the last iteration) or over
        the dynamic-mask phase (cubic, Zhu & Gupta 2017, from every kernel to the target at its
        end); a one-shot run without dynamic masks has nothing to tighten it over (an error).
    distill, distill_temperature: weight of a knowledge-distillation term (KL divergence against
        the outputs of a frozen copy of the model taken before pruning, at this temperature) in
        the ADMM and retraining loss; 0 turns it off.
    retrain_epochs: masked retraining epochs after hard pruning (None = from ``steps``).
    retrain_lr, warmup: retraining learning rate (None = ``RETRAIN_LR_FACTOR`` x lr) with a
        per-step cosine decay after a linear warm-up over this fraction of the steps. Hard
        pruning moves the weights far from where ADMM's small rate settled them, so retraining
        restarts higher, as learning-rate rewinding does (Renda et al. 2020).
    lr, momentum, weight_decay: SGD for the ADMM phase.
    gap_warning: the projection gap (accuracy lost by a trial hard projection) at the end of
        ADMM above which the summary warns that ADMM did not converge.
    layers: conv names to prune (None = every 3x3 conv but the first, and the 1x1 convs per
        conv1x1); conv1x1: "grouped" (every 1x1 conv but the first and the classifier, pruned in
        virtual 3x3 kernels of 9 input channels), "connectivity" (the same convs, single weights
        removed, no patterns) or "dense" (1x1 convs untouched); see
        :func:`patsparse.pruning.layers.select_layers`; connectivity_balanced: same kernel count
        per filter.
    oneshot: prune by projection of the trained weights, then retrain for all of ``steps``
        (the default); False runs ADMM first. At a user's budget (a few thousand images,
        ``steps`` SGD steps) one-shot keeps more accuracy than ADMM with the same steps, because
        retraining, not the penalty, recovers most of what hard pruning costs (PRUNING.md has the
        sweep); ADMM pays off when its iterations get full passes over a large training set.
    dynamic: the fraction of the retraining epochs (``retrain_epochs``, at least one) run with
        dynamic masks (SR-STE, :mod:`patsparse.pruning.dynamic`) before the masks freeze: the
        forward uses the projection of dense weights that keep training, with each plan's
        kernel budget, and the projection is re-chosen as they move, so which taps and kernels
        survive is learnt rather than fixed by the trained weights' magnitudes; then the weights
        are hard-projected and the rest is masked retraining. 0 (the default) keeps one fixed
        projection: with 6,000 images and ``steps`` steps no dynamic setting tried beat it on
        VGG-16 (PRUNING.md has the sweep). A one-shot (not ADMM) method.
    dynamic_reach: the decay ``lambda * (1 - mask) * W`` on the pruned entries during the dynamic
        phase, as how far it alone would pull them to zero over the phase: exp(-reach) of their
        value left (:func:`patsparse.pruning.dynamic.decay_for_reach`), so it means the same at
        any budget. Larger settles the masks sooner; smaller lets more of them change.
    dynamic_every: optimizer steps between re-derivations of the dynamic masks.
    bn_batches: training batches used to re-estimate BatchNorm running statistics right after
        hard pruning (0 = off): the pruned convs' outputs shift, so the statistics gathered on
        the unpruned weights are stale.
    reconstruct: training images used to refit the kept weights of every pruned conv right
        after hard pruning (0 = off): layer by layer, by least squares, so that each reproduces
        the unpruned network's output on those images
        (:mod:`patsparse.pruning.reconstruct`); the projection only chooses which weights
        survive, the refit gives them the values that best stand in for the pruned ones.
        BatchNorm is re-estimated after it. 0 (the default): the refit makes hard pruning cost
        far less, but after ``steps`` of retraining it did not beat retraining the plain
        projection on VGG-16 with 6,000 images (PRUNING.md has the numbers).
    """

    rate: float = 8.0
    library: str = "phase2"
    admm_iters: int = 4
    epochs: int | None = None
    steps: int = 3000
    penalty_strength: float = 0.05
    penalty_reach: float = 3.0
    rho: float | None = None
    rho_growth: float = 2.0
    rho_max: float = 10.0
    allocation: str = "lamp"
    min_layer_keep: float = 0.25
    progressive: bool = False
    distill: float = 0.5
    distill_temperature: float = 4.0
    retrain_epochs: int | None = None
    retrain_lr: float | None = None
    warmup: float = 0.05
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gap_warning: float = 0.02
    layers: list[str] | None = None
    conv1x1: str = "grouped"
    connectivity_balanced: bool = False
    oneshot: bool = True
    dynamic: float = 0.0
    dynamic_reach: float = 3.0
    dynamic_every: int = 1
    bn_batches: int = 50
    reconstruct: int = 0
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
        def count(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 0

        for k in ("admm_iters", "bn_batches", "steps", "reconstruct"):
            need(count(getattr(self, k)), f"{k} must be an int >= 0, got {getattr(self, k)!r}")
        for k in ("epochs", "retrain_epochs"):
            v = getattr(self, k)
            need(v is None or count(v), f"{k} must be an int >= 0 or None (from steps), got {v!r}")
        need(isinstance(self.oneshot, bool), f"oneshot must be True or False, got {self.oneshot!r}")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        admm = [k for k in ADMM_KNOBS if getattr(self, k) != defaults[k]]
        need(not (self.oneshot and admm),
             f"{', '.join(admm)} configure ADMM, which a one-shot run skips; drop "
             f"{'it' if len(admm) == 1 else 'them'} or ask for ADMM (oneshot=False, CLI --admm)")
        need(self.oneshot or (self.admm_iters >= 1 and self.epochs != 0),
             "ADMM needs admm_iters >= 1 and epochs >= 1 (or oneshot=True)")
        need(number(self.dynamic) and 0 <= self.dynamic <= 1,
             f"dynamic must be a fraction of the retraining epochs in [0, 1], got {self.dynamic!r}")
        need(not (self.dynamic and not self.oneshot),
             f"dynamic={self.dynamic} asks for dynamic masks, which replace ADMM's penalty "
             f"(oneshot=False, CLI --admm{', and ' + ', '.join(admm) if admm else ''}); drop one of the two")
        dynamic = [k for k in DYNAMIC_KNOBS if getattr(self, k) != defaults[k]]
        need(not (dynamic and not self.dynamic),
             f"{', '.join(dynamic)} configure dynamic masks, which a run with dynamic=0 skips; drop "
             f"{'it' if len(dynamic) == 1 else 'them'} or ask for them (dynamic=0.5, CLI --dynamic 0.5)")
        need(not (self.progressive and self.oneshot and not self.dynamic),
             "progressive tightens connectivity over ADMM iterations or the dynamic-mask phase, and this "
             "one-shot run has neither; drop it or ask for ADMM (oneshot=False) or dynamic masks (dynamic=0.5)")
        need(not (self.dynamic and self.retrain_epochs == 0),
             "dynamic masks run during retraining, and retrain_epochs=0 leaves none; drop one of the two")
        need(isinstance(self.dynamic_every, int) and not isinstance(self.dynamic_every, bool)
             and self.dynamic_every >= 1, f"dynamic_every must be an int >= 1, got {self.dynamic_every!r}")
        need(number(self.dynamic_reach) and self.dynamic_reach >= 0,
             f"dynamic_reach must be a number >= 0, got {self.dynamic_reach!r}")
        for k in ("rho_max", "lr", "penalty_strength", "penalty_reach", "distill_temperature"):
            v = getattr(self, k)
            need(number(v) and v > 0, f"{k} must be a positive number, got {v!r}")
        need(self.rho is None or (number(self.rho) and self.rho > 0),
             f"rho must be a positive number or None (derived from penalty_reach), got {self.rho!r}")
        need(isinstance(self.conv1x1, str) and self.conv1x1 in CONV1X1,
             f"conv1x1 must be one of {CONV1X1} (the former True is 'connectivity', False 'dense'), "
             f"got {self.conv1x1!r}")
        need(self.allocation in ALLOCATIONS, f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        for k in ("min_layer_keep", "distill", "gap_warning"):
            v = getattr(self, k)
            need(number(v) and 0 <= v <= 1, f"{k} must be a number in [0, 1], got {v!r}")
        need(number(self.warmup) and 0 <= self.warmup < 1, f"warmup must be in [0, 1), got {self.warmup!r}")
        need(number(self.rho_growth) and self.rho_growth >= 1, f"rho_growth must be >= 1, got {self.rho_growth!r}")
        need(self.retrain_lr is None or (number(self.retrain_lr) and self.retrain_lr > 0),
             f"retrain_lr must be positive or None, got {self.retrain_lr!r}")
        need(number(self.momentum) and 0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}")
        need(number(self.weight_decay) and self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        need(self.layers is None or (isinstance(self.layers, (list, tuple))
                                     and all(isinstance(x, str) for x in self.layers)),
             f"layers must be a list of conv names or None, got {self.layers!r}")
        return self

    @property
    def retrain_rate(self) -> float:
        """The masked-retraining learning rate: ``retrain_lr``, else ``RETRAIN_LR_FACTOR`` x lr."""
        return self.retrain_lr if self.retrain_lr is not None else RETRAIN_LR_FACTOR * self.lr

    @property
    def dynamic_epochs(self) -> int:
        """The retraining epochs run with dynamic masks (the first ones); needs ``retrain_epochs``
        set (:meth:`for_loader`)."""
        if not self.dynamic or self.retrain_epochs is None:
            return 0
        return min(self.retrain_epochs, max(1, round(self.dynamic * self.retrain_epochs)))

    def for_loader(self, batches: int) -> "PruneRecipe":
        """This recipe with ``epochs`` (ADMM only), ``retrain_epochs`` (unset ones from ``steps``) and
        ``retrain_lr`` made concrete for a loader of ``batches`` batches: what a run actually
        uses and saves."""
        budget = self.steps / max(1, batches)  # in epochs of this loader
        admm = 0.0 if self.oneshot else budget / 2
        epochs = None if self.oneshot else (
            self.epochs if self.epochs is not None else max(1, round(admm / max(1, self.admm_iters))))
        retrain = self.retrain_epochs if self.retrain_epochs is not None else max(1, round(budget - admm))
        return dataclasses.replace(self, epochs=epochs, retrain_epochs=retrain, retrain_lr=self.retrain_rate)

    def rho_schedule(self, steps: int) -> list[float]:
        """The penalty weight of every ADMM iteration, for iterations of ``steps`` SGD steps.

        With ``rho`` unset the last iteration's rho is the larger of two: the one whose pull
        ``lr * rho`` is ``penalty_strength`` (how close W settles to Z against the data
        gradient, whatever the budget), and the smallest that gives ``penalty_reach`` in
        ``steps`` steps (how fast it gets there, which short loaders need), with the pull
        capped at ``MAX_PULL``. Earlier iterations are smaller by ``rho_growth`` each: the pull
        starts gently, while Z still moves.
        """
        if self.rho is not None:
            return geometric_rhos(self.rho, self.rho_growth, self.rho_max, self.admm_iters)
        rate = self.penalty_reach / max(1, steps)  # -ln(contraction) needed per step
        lo, hi = 0.0, MAX_PULL
        if -math.log(contraction(hi, self.momentum)) > rate:
            for _ in range(60):  # -ln(contraction) grows with the pull on [0, 1): bisect
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if -math.log(contraction(mid, self.momentum)) < rate else (lo, mid)
        last = max(hi, min(self.penalty_strength, MAX_PULL)) / self.lr
        return [last / self.rho_growth ** (self.admm_iters - 1 - it) for it in range(self.admm_iters)]

    def reach(self, rho: float, steps: int) -> float:
        """How far ``steps`` SGD steps with penalty ``rho`` pull W towards Z: the penalty alone
        would leave exp(-reach) of the distance."""
        return -steps * math.log(max(contraction(self.lr * rho, self.momentum), 1e-300))

    def min_steps(self) -> int:
        """The fewest SGD steps per ADMM iteration whose best reach is ``MIN_REACH``: a loader
        smaller than this is an error, not a run that silently does nothing."""
        best = -math.log(max(contraction(MAX_PULL, self.momentum), 1e-300))
        return max(1, math.ceil(MIN_REACH / best))

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
