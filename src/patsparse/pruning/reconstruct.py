"""Layer-wise reconstruction after hard pruning: refit every pruned conv's kept weights by least
squares so that it reproduces the unpruned network's output on real inputs.

Why: the projection chooses which weights survive and keeps their trained values, which is
right for the weights alone but not for what the layer computes: the contribution of a pruned
tap is simply lost, even when kept taps that see correlated inputs could carry most of it. With
a few hundred images the best values for the kept weights are a small linear least-squares
problem per filter (OBC / ExactOBS, Frantar & Alistarh 2022; SparseGPT; AdaPrune, Hubara et al.
2021), which a short retraining budget otherwise has to find by SGD, from further away.

What is solved: layer by layer, in the order the forward reaches them, the pruned model (its
earlier layers already refit) and the unpruned model run the calibration images up to the layer.
With X the pruned model's im2col inputs and X_d the unpruned model's at the same sampled output
positions, H = X X^T and C = X X_d^T, the kept entries S of filter f solve

    (H[S,S] + lam I) w[S] = (C w_d)[S] + lam w_p[S]

that is: minimise ||w X - w_d X_d||^2 + lam ||w - w_p||^2 over weights that are zero outside S.
The target is the unpruned network's own pre-BatchNorm output, so the error an earlier pruned
layer leaves in X is corrected here rather than passed on, and the BatchNorm statistics after the
layer stay close to valid. The damping lam (``DAMPING`` x the mean of diag H, per group) pulls
towards the projected weights w_p, so the refit is never worse than the projection on the
calibration sample and an ill-conditioned H (dead channels, few positions) stays harmless. A
conv's bias is refit with its filter (a constant input). Entries outside the mask stay exactly
zero, so the sparsity spec holds. Grouped convs solve per group; a 1x1 conv's kept sets are
whole channel groups (:mod:`patsparse.pruning.grouping`), which the spec's masks already say.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .spec import spec_masks

DAMPING = 0.01  # lam as a fraction of the mean diagonal of H (SparseGPT's default)
POSITIONS = 16384  # output positions sampled per layer over all calibration images
_COLUMN_BLOCK = 1 << 25  # im2col entries unfolded at once (bounds memory on large images)
_SOLVE_BLOCK = 1 << 24  # entries of the batched (filters x |S| x |S|) systems solved at once


class _Reached(Exception):
    """Raised by a forward pre-hook to stop a forward at the conv whose input it carries."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value


def conv_columns(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The im2col columns of ``x`` for ``conv``, (B, C * kh * kw, L): ``conv(x)`` is
    ``weight.view(O, -1) @ columns + bias`` for an ungrouped conv (channel-major rows, so group
    g's rows are a contiguous block). Padding follows the conv's own (mode and ``"same"``)."""
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    x = F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)
    return F.unfold(x, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)


def layer_input(model: nn.Module, conv: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The input ``conv`` receives when ``model`` runs ``x`` (the forward stops there), or None
    when the forward never reaches it. Whatever the model returns is never looked at."""
    def stop(module: nn.Module, args: tuple) -> None:
        raise _Reached(args[0])

    hook = conv.register_forward_pre_hook(stop)
    try:
        model(x)
    except _Reached as reached:
        return reached.value
    finally:
        hook.remove()
    return None


def forward_order(model: nn.Module, names: Iterable[str], x: torch.Tensor) -> list[str]:
    """``names`` (modules of ``model``) in the order a forward of ``x`` first reaches them;
    modules it never reaches are left out."""
    modules = dict(model.named_modules())
    order: list[str] = []
    hooks = [modules[n].register_forward_pre_hook(lambda m, a, n=n: None if n in order else order.append(n))
             for n in names]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return order


def calibration_batches(loader: Iterable, images: int) -> list[torch.Tensor]:
    """The inputs of the loader's first batches, ``images`` in all (fewer if it has fewer)."""
    out, n = [], 0
    for x, _ in loader:
        if n >= images:
            break
        out.append(x[:images - n])
        n += len(out[-1])
    return out


def _augmented(conv: nn.Conv2d, x: torch.Tensor, positions: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Per image chunk, (groups, K_g [+1], B_chunk * positions) float64 columns at ``positions``
    random output positions per image (every position when there are fewer); a row of ones is
    appended per group when the conv has a bias, which is refit with the weights."""
    g = conv.groups
    k = conv.weight[0].numel() * g
    cols = []
    chunk = max(1, _COLUMN_BLOCK // max(1, k * x.shape[2] * x.shape[3]))
    for part in x.split(chunk):
        c = conv_columns(conv, part)  # (b, K, L)
        b, _, length = c.shape
        p = min(positions, length)
        if p < length:
            idx = torch.rand(b, length, generator=generator).argsort(dim=1)[:, :p].to(c.device)
            c = c.gather(2, idx[:, None, :].expand(b, k, p))
        c = c.permute(1, 0, 2).reshape(g, k // g, b * p).double()
        if conv.bias is not None:
            c = torch.cat([c, c.new_ones(g, 1, b * p)], dim=1)
        cols.append(c)
    return cols


@torch.no_grad()
def layer_statistics(model: nn.Module, dense: nn.Module, name: str, batches: list[torch.Tensor],
                     positions: int, generator: torch.Generator, device: str = "cpu",
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(H, C, H_d)`` of layer ``name``, each (groups, K_g, K_g) float64 (K_g + 1 with a bias):
    ``H = X X^T``, ``C = X X_d^T``, ``H_d = X_d X_d^T`` over the same sampled positions, X the
    pruned ``model``'s im2col inputs of the layer and X_d the unpruned ``dense`` model's."""
    conv = dict(model.named_modules())[name]
    ref = dict(dense.named_modules())[name]
    h = c = hd = None
    for x in batches:
        x = x.to(device)
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        ours = _augmented(conv, layer_input(model, conv, x), positions, torch.Generator().manual_seed(seed))
        theirs = _augmented(ref, layer_input(dense, ref, x), positions, torch.Generator().manual_seed(seed))
        for a, b in zip(ours, theirs):
            if h is None:
                h, c, hd = (a.new_zeros(a.shape[0], a.shape[1], a.shape[1]) for _ in range(3))
            h.baddbmm_(a, a.transpose(1, 2))
            c.baddbmm_(a, b.transpose(1, 2))
            hd.baddbmm_(b, b.transpose(1, 2))
    return h, c, hd


def _grouped(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A conv weight (and bias) as (groups, filters per group, K_g [+1]) float64 rows."""
    o, g = weight.shape[0], conv.groups
    w = weight.detach().reshape(g, o // g, -1).double()
    if bias is not None:
        w = torch.cat([w, bias.detach().reshape(g, o // g, 1).double()], dim=2)
    return w


def refit_weights(w_dense: torch.Tensor, w_projected: torch.Tensor, mask: torch.Tensor, h: torch.Tensor,
                  c: torch.Tensor, damping: float = DAMPING) -> torch.Tensor:
    """The refit rows, (groups, filters per group, K_g) float64, zero where ``mask`` is 0.

    Every row solves ``(H[S,S] + lam I) w[S] = (C w_d)[S] + lam w_p[S]`` for its kept set S
    (see the module docstring), lam = ``damping`` x the mean diagonal of its group's H; a group
    whose inputs are all zero keeps the projection. Rows with equal |S| are solved together.
    """
    g, per, k = w_dense.shape
    mean = h.diagonal(dim1=1, dim2=2).mean(dim=1)
    lam = torch.where(mean > 0, damping * mean, torch.ones_like(mean))  # all-zero inputs: w = w_p
    rhs = (torch.einsum("gij,gfj->gfi", c, w_dense) + lam[:, None, None] * w_projected).reshape(g * per, k)
    kept = mask.reshape(g * per, k).bool()
    group = torch.arange(g, device=h.device).repeat_interleave(per)
    sizes = kept.sum(dim=1)
    out = torch.zeros(g * per, k, dtype=torch.float64, device=h.device)
    for s in sizes.unique().tolist():
        if s == 0:
            continue
        rows = torch.nonzero(sizes == s).flatten()
        for part in rows.split(max(1, _SOLVE_BLOCK // (s * s))):
            idx = torch.nonzero(kept[part])[:, 1].view(len(part), s)  # row-major: each row's kept entries
            gid = group[part]
            a = h[gid[:, None, None], idx[:, :, None], idx[:, None, :]]
            a.diagonal(dim1=1, dim2=2).add_(lam[gid][:, None])
            out[part[:, None], idx] = torch.linalg.solve(a, rhs[part[:, None], idx].unsqueeze(-1)).squeeze(-1)
    return out.view(g, per, k)


def output_error(w: torch.Tensor, w_dense: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
                 hd: torch.Tensor) -> float:
    """``||w X - w_d X_d||^2 / ||w_d X_d||^2`` over the sample, from the layer's statistics
    (rows as :func:`refit_weights` takes them)."""
    quad = lambda a, m, b: torch.einsum("gfi,gij,gfj->", a, m, b)  # noqa: E731
    target = float(quad(w_dense, hd, w_dense))
    err = float(quad(w, h, w) - 2 * quad(w, c, w_dense)) + target
    return max(err, 0.0) / target if target > 0 else 0.0


@torch.no_grad()
def reconstruct(model: nn.Module, dense: nn.Module, spec: Mapping[str, Any], loader: Iterable, images: int,
                device: str = "cpu", positions: int = POSITIONS) -> dict[str, Any]:
    """Refit the kept weights (and bias) of every layer of ``spec`` in the hard-pruned ``model``,
    in place, against ``dense`` (the same model before hard pruning), on the first ``images``
    inputs of ``loader``; ``positions`` output positions per layer are sampled over them.

    Both models run in eval mode (BatchNorm with its running statistics; the caller re-estimates
    them afterwards). Returns a history record: the images used and, per layer, the relative
    output error against the dense layer before and after the refit, on the sample.
    """
    batches = calibration_batches(loader, images)
    used = sum(len(b) for b in batches)
    masks = spec_masks(spec)
    modules, references = dict(model.named_modules()), dict(dense.named_modules())
    modes = (model.training, dense.training)
    model.eval()
    dense.eval()
    generator = torch.Generator().manual_seed(0)
    per_image = max(1, math.ceil(positions / max(1, used)))
    layers: dict[str, dict[str, float]] = {}
    try:
        for name in forward_order(model, masks, batches[0].to(device)) if batches else []:
            conv = modules[name]
            ref = references[name]
            h, c, hd = layer_statistics(model, dense, name, batches, per_image, generator, device)
            w_dense = _grouped(conv, ref.weight, ref.bias)
            w_projected = _grouped(conv, conv.weight, conv.bias)
            mask = _grouped(conv, masks[name].to(conv.weight.device),
                            None if conv.bias is None else torch.ones_like(conv.bias))
            w = refit_weights(w_dense, w_projected, mask, h, c)
            layers[name] = {"error_projected": output_error(w_projected, w_dense, h, c, hd),
                            "error_refit": output_error(w, w_dense, h, c, hd)}
            k = conv.weight[0].numel()
            conv.weight.copy_(w[:, :, :k].reshape(conv.weight.shape).to(conv.weight.dtype))
            if conv.bias is not None:
                conv.bias.copy_(w[:, :, k].reshape(conv.bias.shape).to(conv.bias.dtype))
    finally:
        model.train(modes[0])
        dense.train(modes[1])
    return {"images": used, "layers": layers}


def summary(record: Mapping[str, Any]) -> str:
    """One line for a :func:`reconstruct` record: the mean relative output error over layers."""
    layers = record["layers"].values()
    mean = lambda k: sum(v[k] for v in layers) / max(1, len(layers))  # noqa: E731
    return (f"refit {len(layers)} layers on {record['images']} images: relative output error against the "
            f"unpruned layers {mean('error_projected'):.4f} after projection, {mean('error_refit'):.4f} refit")
