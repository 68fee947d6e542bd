"""``patsparse.describe``: what sparsity a model has, read from its weights alone.

Works on any model (pruned by patsparse or not, or loaded from elsewhere): per conv layer it
counts kernels kept and weights kept, recognises 4-entry pattern kernels, and builds the pattern
histogram; the totals give the rate over every sparse conv (the rate ``prune`` targets), the
3x3-conv rate over the sparse 3x3 layers, the rate over all 3x3 convs, and the whole-model rate
over every parameter. A sparse ungrouped 1x1 conv with at least 9 input channels whose every
virtual 3x3 kernel (:mod:`patsparse.pruning.grouping`) holds at most 4 non-zeros is a pattern
layer: its kernels are those groups and the histogram counts them with the 3x3 kernels.
Patterns are labelled by their index in the model's library when a spec is attached, else by
their kept positions (row-major 0..8), e.g. ``1345``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..patterns.library import pattern_library, positions
from .grouping import grouped_rows, grouping_problem
from .layers import conv_layers, is_3x3


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, ...]
    kind: str          # "3x3", "3x3 depthwise", "1x1", "1x1 grouped" (virtual 3x3 kernels), "KxK"
    status: str        # "dense", "pattern" (every kept kernel has <= 4 non-zeros), "sparse"
    kernels: int
    kernels_kept: int
    weights: int
    nonzeros: int
    patterns_used: int

    @property
    def rate(self) -> float:
        return self.weights / max(1, self.nonzeros)


@dataclass
class SparsityReport:
    layers: list[LayerReport]
    histogram: dict[str, int]
    pruned_rate: float         # over every conv that is not dense (3x3 and 1x1): what prune targets
    conv3x3_rate: float        # over 3x3 convs that are pruned (not dense)
    all_conv3x3_rate: float    # over every 3x3 conv, dense ones included
    model_rate: float          # over every parameter of the model
    parameters: int
    nonzero_parameters: int
    dense_3x3_layers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        head = ("layer", "kind", "shape", "status", "kernels kept", "weights kept", "rate", "patterns")
        rows = [(l.name, l.kind, "x".join(map(str, l.shape)), l.status,
                 f"{l.kernels_kept}/{l.kernels}", f"{l.nonzeros}/{l.weights}", f"{l.rate:.2f}x",
                 str(l.patterns_used) if l.status == "pattern" else "-") for l in self.layers]
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
        out = [line(head), line(["-" * w for w in widths]), *map(line, rows), ""]
        out.append(f"pruned convs: {self.pruned_rate:.2f}x   3x3-conv rate (pruned 3x3 layers): {self.conv3x3_rate:.2f}x   "
                   f"all 3x3 convs: {self.all_conv3x3_rate:.2f}x   whole model: {self.model_rate:.2f}x "
                   f"({self.nonzero_parameters}/{self.parameters} parameters non-zero)")
        if self.dense_3x3_layers:
            out.append(f"dense 3x3 layers: {', '.join(self.dense_3x3_layers)}")
        if self.histogram:
            total = sum(self.histogram.values())
            top = sorted(self.histogram.items(), key=lambda kv: -kv[1])
            out.append("pattern histogram: " + ", ".join(
                f"{k}: {v} ({100 * v / total:.1f}%)" for k, v in top[:16])
                + (f", ... {len(top) - 16} more" if len(top) > 16 else ""))
        return "\n".join(out)


def _labels(model: nn.Module) -> dict[tuple[int, ...], str]:
    spec = getattr(model, "patsparse_spec", None)
    lib = torch.tensor(spec["library"], dtype=torch.float32) if spec else pattern_library("phase2")
    prefix = f"{spec.get('library_name') or 'lib'}#" if spec else "phase2#"
    return {p: f"{prefix}{i} ({''.join(map(str, p))})" for i, p in enumerate(positions(lib))}


def describe(model: nn.Module) -> SparsityReport:
    """Per-layer kernels kept, pattern histogram and compression rates of ``model``."""
    labels = _labels(model)
    layers: list[LayerReport] = []
    hist: Counter[str] = Counter()
    w33 = nz33 = wall = nzall = wpruned = nzpruned = 0
    dense33: list[str] = []
    for name, m in conv_layers(model):
        w = m.weight.detach().cpu()
        weights, nonzeros = w.numel(), int((w != 0).sum())
        grouped = nonzeros < weights and grouping_problem(m) is None
        nz = (grouped_rows(w) if grouped else w.flatten(2)) != 0
        per_kernel = nz.sum(dim=2)
        kept = per_kernel > 0
        kind = ("3x3 depthwise" if m.groups > 1 and w.shape[1] == 1 else "3x3") if is_3x3(m) else \
            ("1x1" if tuple(m.kernel_size) == (1, 1) else "x".join(map(str, m.kernel_size)))
        used = 0
        if nonzeros == weights:
            status = "dense"
        elif (is_3x3(m) or grouped) and bool((per_kernel[kept] <= 4).all()):
            status = "pattern"
            kind += " grouped" if grouped else ""
            codes = (nz[kept].to(torch.int64) * (1 << torch.arange(9))).sum(dim=1)
            uniq, counts = torch.unique(codes, return_counts=True)
            used = len(uniq)
            for code, c in zip(uniq.tolist(), counts.tolist()):
                pos = tuple(i for i in range(9) if code >> i & 1)
                hist[labels.get(pos, "".join(map(str, pos)) if len(pos) == 4 else f"partial {''.join(map(str, pos))}")] += c
        else:
            status = "sparse"
        if status != "dense":
            wpruned += weights
            nzpruned += nonzeros
        if is_3x3(m):
            wall += weights
            nzall += nonzeros
            if status == "dense":
                dense33.append(name)
            else:
                w33 += weights
                nz33 += nonzeros
        layers.append(LayerReport(name, tuple(w.shape), kind, status, int(kept.numel()), int(kept.sum()),
                                  weights, nonzeros, used))
    params = sum(p.numel() for p in model.parameters())
    nzp = sum(int((p.detach() != 0).sum()) for p in model.parameters())
    rate = lambda total, nonzero: total / max(1, nonzero) if total else 1.0  # noqa: E731
    return SparsityReport(layers, dict(hist), rate(wpruned, nzpruned), rate(w33, nz33), rate(wall, nzall),
                          params / max(1, nzp), params, nzp, dense33)
