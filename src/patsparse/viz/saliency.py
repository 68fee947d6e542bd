"""Three ways of seeing what a CNN extracts from an image, as the paper uses them (Figure 5).

- Guided backpropagation (Springenberg et al. 2015): the input gradient of a class score where
  every ReLU passes back only *positive* gradients and only where its forward input was positive.
- Integrated gradients (Sundararajan et al. 2017): the path integral of the input gradient along
  the straight line from a baseline to the image, times (image - baseline); it satisfies
  *completeness* (attributions sum to f(x) - f(baseline)), which we report as a check.
- Inverted representation (Mahendran & Vedaldi 2015): an image optimised so that one layer's
  features match those of the real image, under total-variation and norm priors; it shows what
  information that layer keeps.

All three leave the model as they found it (mode, hooks, requires_grad of parameters).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import InputError

Target = int | Sequence[int] | torch.Tensor


# ---------------------------------------------------------------------------- shared helpers

@contextlib.contextmanager
def _eval_frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (BatchNorm statistics, no dropout) and frozen parameters for the duration:
    saliency differentiates with respect to the *input*; parameter gradients would only cost
    memory and leave ``.grad`` dirty for the caller."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, rg in flags:
            p.requires_grad_(rg)
        model.train(was_training)


def _check_input(x: torch.Tensor, where: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise InputError(f"{where}: expected an image batch of shape (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not torch.isfinite(x).all():
        raise InputError(f"{where}: the input contains NaN or Inf")


def _targets(target: Target | None, logits: torch.Tensor, where: str) -> torch.Tensor:
    """Per-example class indices; ``None`` means the model's own prediction."""
    n, k = logits.shape
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target, dtype=torch.long).reshape(-1).to(logits.device)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise InputError(f"{where}: {t.numel()} targets for a batch of {n}")
    if bool((t < 0).any()) or bool((t >= k).any()):
        raise InputError(f"{where}: target class out of range 0..{k - 1}: {t.tolist()}")
    return t


def _class_score(model: nn.Module, x: torch.Tensor, target: torch.Tensor, where: str) -> torch.Tensor:
    """Logit of ``target`` for every example (the pre-softmax score, as in all three papers)."""
    logits = model(x)
    if logits.dim() != 2:
        raise InputError(f"{where}: the model must return (N, classes) logits, got {tuple(logits.shape)}")
    return logits.gather(1, target.to(logits.device).view(-1, 1)).squeeze(1)


# ---------------------------------------------------------------------- guided backpropagation

class _GuidedReLU(torch.autograd.Function):
    """ReLU (or ReLU6 when ``upper`` is set) whose backward keeps a gradient only where it is
    positive AND the forward input was in the active range."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, upper: float | None) -> torch.Tensor:  # type: ignore[override]
        active = x > 0 if upper is None else (x > 0) & (x < upper)
        ctx.save_for_backward(active)
        return x.clamp(min=0) if upper is None else x.clamp(0, upper)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (active,) = ctx.saved_tensors
        return grad.clamp(min=0) * active, None


class _GuidedMode(TorchFunctionMode):
    """Replaces every ReLU/ReLU6 call (module or functional, in-place or not) while active, so
    guided backprop also works on models that call ``F.relu`` in ``forward`` (ResNet blocks)."""

    _RELU = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}
    _RELU6 = {F.relu6}

    def __init__(self) -> None:
        super().__init__()
        self.replaced = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._RELU:
            self.replaced += 1
            return _GuidedReLU.apply(args[0], None)
        if func in self._RELU6:
            self.replaced += 1
            return _GuidedReLU.apply(args[0], 6.0)
        if func is F.hardtanh and _is_relu6(args, kwargs):
            self.replaced += 1
            return _GuidedReLU.apply(args[0], 6.0)
        return func(*args, **kwargs)


def _is_relu6(args: tuple, kwargs: dict) -> bool:
    lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
    hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
    return lo == 0.0 and hi == 6.0


def guided_backprop(model: nn.Module, x: torch.Tensor, target: Target | None = None) -> torch.Tensor:
    """Guided-backpropagation map of the ``target`` class logit with respect to ``x``.

    Returns a tensor shaped like ``x``. ``target`` is a class index (or one per example);
    ``None`` uses the predicted class. Raises InputError if the model has no ReLU to guide,
    since the result would silently be a plain gradient.
    """
    _check_input(x, "guided_backprop")
    with _eval_frozen(model):
        xg = x.detach().clone().requires_grad_(True)
        mode = _GuidedMode()
        with torch.enable_grad(), mode:
            logits = model(xg)
        if mode.replaced == 0:
            raise InputError("guided_backprop: the model calls no ReLU/ReLU6, so guided "
                             "backpropagation would equal the plain gradient")
        t = _targets(target, logits, "guided_backprop")
        score = logits.gather(1, t.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, xg)
    return grad.detach()


# -------------------------------------------------------------------- integrated gradients

@dataclass
class IntegratedGradients:
    """Result of :func:`integrated_gradients`.

    ``delta`` = sum(attributions) - (f(x) - f(baseline)) per example: the completeness error,
    which shrinks as ``steps`` grows; a large value means too few steps, not a good map.
    """

    attributions: torch.Tensor
    delta: torch.Tensor
    score_input: torch.Tensor
    score_baseline: torch.Tensor
    steps: int
    method: str = field(default="trapezoid")


_WEIGHTS: dict[str, Callable[[int], tuple[torch.Tensor, torch.Tensor]]] = {
    # method -> (alphas in [0, 1], quadrature weights summing to 1)
    "left": lambda m: (torch.arange(m, dtype=torch.float64) / m, torch.full((m,), 1.0 / m, dtype=torch.float64)),
    "right": lambda m: (torch.arange(1, m + 1, dtype=torch.float64) / m, torch.full((m,), 1.0 / m, dtype=torch.float64)),
    "middle": lambda m: ((torch.arange(m, dtype=torch.float64) + 0.5) / m, torch.full((m,), 1.0 / m, dtype=torch.float64)),
    "trapezoid": lambda m: (torch.linspace(0, 1, m + 1, dtype=torch.float64),
                            torch.cat([torch.tensor([0.5]), torch.ones(m - 1), torch.tensor([0.5])]).double() / m),
}


def integrated_gradients(model: nn.Module, x: torch.Tensor, target: Target | None = None, *,
                         baseline: torch.Tensor | float = 0.0, steps: int = 64,
                         method: str = "trapezoid", batch_size: int = 32) -> IntegratedGradients:
    """Integrated gradients of the ``target`` class logit: a Riemann sum (``method`` = left,
    right, middle or trapezoid) of the input gradient at ``steps`` points on the straight path
    from ``baseline`` (a tensor shaped like ``x`` or a constant; 0 = black in the model's input
    space) to ``x``. ``batch_size`` bounds how many path points are evaluated at once.
    """
    _check_input(x, "integrated_gradients")
    if method not in _WEIGHTS:
        raise InputError(f"integrated_gradients: method must be one of {sorted(_WEIGHTS)}, got {method!r}")
    if steps < 1:
        raise InputError(f"integrated_gradients: steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise InputError(f"integrated_gradients: batch_size must be >= 1, got {batch_size}")
    x = x.detach()
    base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    try:
        base = base.expand_as(x)
    except RuntimeError:
        raise InputError(f"integrated_gradients: baseline of shape {tuple(base.shape)} does not "
                         f"broadcast to the input {tuple(x.shape)}") from None
    alphas, weights = _WEIGHTS[method](steps)
    with _eval_frozen(model):
        with torch.no_grad():
            logits_x, logits_b = model(x), model(base.contiguous())
        t = _targets(target, logits_x, "integrated_gradients")
        f_x = logits_x.gather(1, t.view(-1, 1)).squeeze(1)
        f_b = logits_b.gather(1, t.view(-1, 1)).squeeze(1)
        diff = x - base
        total = torch.zeros_like(x, dtype=torch.float64)
        for i in range(x.shape[0]):
            for s in range(0, len(alphas), batch_size):
                a = alphas[s:s + batch_size].to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
                w = weights[s:s + batch_size].to(x.device).view(-1, 1, 1, 1)
                path = (base[i:i + 1] + a * diff[i:i + 1]).requires_grad_(True)
                with torch.enable_grad():
                    score = _class_score(model, path, t[i].expand(len(a)), "integrated_gradients")
                    (g,) = torch.autograd.grad(score.sum(), path)
                total[i] += (g.double() * w).sum(0)
    attributions = (total * diff.double()).to(x.dtype)
    delta = attributions.flatten(1).sum(1) - (f_x - f_b)
    return IntegratedGradients(attributions, delta, f_x, f_b, steps, method)


# ------------------------------------------------------------------ inverted representation

@dataclass
class Inversion:
    """Result of :func:`invert_representation`: the image, and the feature-matching loss
    (||phi(x) - phi0||^2 / ||phi0||^2) at the start and at the end, so a failed optimisation
    is visible in numbers rather than only as a bad picture."""

    image: torch.Tensor
    layer: str
    feature_loss_start: float
    feature_loss_end: float
    history: list[float]


def _module(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if layer not in modules:
        convs = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.ReLU, nn.Sequential)) and n]
        raise InputError(f"invert_representation: model has no layer named {layer!r}; "
                         f"some layers it has: {convs[:12]}")
    return modules[layer]


def _features(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, o: out.append(o))
    try:
        model(x)
    finally:
        handle.remove()
    if not out or not isinstance(out[0], torch.Tensor):
        raise InputError("invert_representation: the chosen layer produced no tensor output")
    return out[0]


def total_variation(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """TV^beta prior of Mahendran & Vedaldi: sum over pixels of (dx^2 + dy^2)^(beta/2)."""
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx.pow(2) + dy.pow(2) + 1e-12).pow(beta / 2).sum()


def invert_representation(model: nn.Module, x: torch.Tensor, layer: str, *, steps: int = 200,
                          lr: float = 0.05, tv_weight: float = 1e-2, norm_weight: float = 1e-4,
                          alpha: float = 2.0, beta: float = 2.0,
                          bounds: tuple[float, float] | None = None, seed: int = 0) -> Inversion:
    """Reconstruct an image from ``layer``'s features of ``x`` (Mahendran & Vedaldi 2015).

    Minimises  ||phi(z) - phi(x)||^2 / ||phi(x)||^2 + norm_weight * ||z||_alpha^alpha / P
    + tv_weight * TV^beta(z) / P  over z (P = number of pixels), with Adam from small noise
    (``seed``). ``alpha=2`` is the L2 prior; the paper of origin uses alpha=6 to bound the
    range. ``bounds`` clamps z to the input's value range after each step.
    """
    _check_input(x, "invert_representation")
    if steps < 1 or lr <= 0:
        raise InputError(f"invert_representation: need steps >= 1 and lr > 0, got {steps}, {lr}")
    module = _module(model, layer)
    x = x.detach()
    with _eval_frozen(model):
        with torch.no_grad():
            target = _features(model, module, x).detach()
        norm0 = target.pow(2).sum().clamp_min(1e-12)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        z = (torch.randn(x.shape, generator=gen).to(x) * float(x.std().clamp_min(1e-3)) * 0.1).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        pixels = float(x[0].numel())
        history: list[float] = []
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            with torch.enable_grad():
                feat = _features(model, module, z)
                match = (feat - target).pow(2).sum() / norm0
                loss = (match + norm_weight * z.abs().pow(alpha).sum() / pixels
                        + tv_weight * total_variation(z, beta) / pixels)
                loss.backward()
            opt.step()
            if bounds is not None:
                with torch.no_grad():
                    z.clamp_(*bounds)
            history.append(float(match.detach()))
        with torch.no_grad():
            end = float((_features(model, module, z) - target).pow(2).sum() / norm0)
    return Inversion(z.detach(), layer, history[0], end, history)
