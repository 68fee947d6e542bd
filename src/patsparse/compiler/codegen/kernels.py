"""The kernel registry: one entry per op family, the one place that says which generator runs a
node, what its tuning space is, and how its generator is called.

Each ``KernelFamily`` has ``matches(node)`` (None: not this family; else a dict of what the
family read from the node, e.g. a pattern conv's sparsity), ``generate(step, schedule, target,
threads)`` and ``candidates(step, target, threads)`` (the schedules the tuner measures; the
first is the untuned default where there is one). Families are tried in order, so a fused node
(attributes ``pool`` or ``expand``, lowering.py), a sparse 3x3 conv and a 1x1 conv pruned in
virtual 3x3 kernels are claimed before the dense conv. A pattern conv may still run a dense conv
kernel with its zeros in place (a schedule with dense_conv's keys): where the cost model ranks
it cheaper untuned, and among the candidates the tuner measures. Adding an op family: its
generator module and one entry in ``FAMILIES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ...errors import UnsupportedError
from ..ir import Node
from ..grouped import grouped_sparsity, kept_weights
from ..reorder import analyse
from ..target import Target
from . import (channels, channelwise, conv_pool, dense_conv, depthwise, gemm, grouped1x1, movement, pool, pw_dw,
               softmax)
from .base import GeneratedKernel
from .pattern_conv import candidate_schedules, gen_pattern_conv
from .pattern_conv import cost as pattern_cost
from .step import Step

# a 3x3 conv goes to the pattern kernel when it computes at most this share of the dense taps
PATTERN_MAX_DENSITY = 0.6
MAX_CANDIDATES = 6  # schedules the tuner measures per layer
DENSE_CANDIDATES = 2  # dense schedules (the best of two kernel families) a pattern conv's tuner adds
DENSE_KEYS = ("wino", "mr", "np")  # keys only dense_conv's schedules have
# a pattern conv runs a dense kernel untuned only where that is modelled this much cheaper. On
# the layers measured (pattern-only VGG-16 CIFAR and ResNet-18 ImageNet, both families on the
# same weights, benchmarks.pattern_families, AVX-512) Winograd won where the modelled ratio was
# 1.19 and up (128->128 @16x16: 1.14-1.24x faster; 256->256 @14x14 at 1.23: 0.8-1.3x, run to
# run) and tied or lost at 1.15 and below (64->128 @16x16, 128->128 @28x28): closer calls are
# the tuner's, which measures both
DENSE_MARGIN = 1.18


@dataclass(frozen=True)
class KernelFamily:
    """One op family's generator (see the module docstring)."""

    kind: str
    matches: Callable[[Node], dict | None]
    generate: Callable[[Step, dict | None, Target, int | None], GeneratedKernel]
    candidates: Callable[[Step, Target, int | None], list[dict]] = lambda step, target, threads: []


def _conv(node: Node, *, fused: str | None = None, groups1: bool = True) -> bool:
    """A conv node of the plain (``fused`` None) or the given fused form."""
    a = node.attrs
    if node.op != "conv" or ("pool" in a) != (fused == "pool") or ("expand" in a) != (fused == "expand"):
        return False
    return fused is not None or (a["groups"] == 1) == groups1


def _common(step: Step, schedule: dict | None, target: Target) -> dict:
    n = step.node
    return dict(in_layout=step.in_layout, out_layout=step.out_layout, act=n.act,
                has_residual=n.residual is not None, schedule=schedule, target=target)


def _out_channels(step: Step) -> int:
    return step.node.params["weight"].shape[0] if "weight" in step.node.params else step.out_layout.C


# ---- pattern conv ---------------------------------------------------------------------------
def _pattern_matches(node: Node) -> dict | None:
    a = node.attrs
    if not _conv(node) or a["k"] != 3 or a["stride"] not in (1, 2):
        return None
    w = node.params["weight"]
    sp = analyse(w, node.name)
    density = sp.taps_per_kernel().sum() / max(1, 9 * w.shape[0] * w.shape[1])
    return {"sparsity": sp} if density <= PATTERN_MAX_DENSITY else None


def _pattern_generate(step: Step, schedule: dict | None, target: Target, threads: int | None) -> GeneratedKernel:
    n, a = step.node, step.node.attrs
    if schedule is None:
        schedule = _pattern_default(step, target)
    if dense_schedule(schedule):  # the zeros in place, through the dense conv's kernels
        return _conv2d_generate(step, schedule, target, threads)
    return gen_pattern_conv(step.cname, n.params["weight"], stride=a["stride"], padding=a["padding"],
                            where=n.name, sparsity=step.sparsity, threads=threads, **_common(step, schedule, target))


def dense_schedule(schedule: dict | None) -> bool:
    """Whether ``schedule`` (of a pattern-matched conv) names a dense conv kernel: its keys are
    dense_conv.schedules' (implicit-GEMM tiles, channel-vector tiles, Winograd)."""
    return bool(schedule) and any(k in schedule for k in DENSE_KEYS)


def dense_args(step: Step, target: Target) -> dict:
    """dense_conv.schedules' (and ranked's) arguments for a conv step."""
    a = step.node.attrs
    return dict(cout=step.out_layout.C, out_layout=step.out_layout, cin=step.in_layout.C, k=a["k"],
                padding=a["padding"], stride=a["stride"], in_layout=step.in_layout, target=target)


def _pattern_default(step: Step, target: Target) -> dict | None:
    """The untuned choice for a pattern-matched conv: None (the pattern kernel's own default
    schedule) unless the dense conv's cheapest schedule is modelled DENSE_MARGIN times cheaper
    than the pattern kernel (pattern_conv.cost, same units): a layer with many taps kept on a
    large plane does fewer multiplies as Winograd, zeros and all, than as pattern FMAs."""
    own = pattern_cost(step.sparsity, step.in_layout, step.out_layout, target)
    cycles, _, sched = dense_conv.ranked(**dense_args(step, target))[0]
    return sched if cycles * DENSE_MARGIN < own else None


def _pattern_candidates(step: Step, target: Target, threads: int | None) -> list[dict]:
    cands = candidate_schedules(step.in_layout, step.out_layout, target, threads)
    rows = [c for c in cands if c["layout"] == "rows"]
    flat = [c for c in cands if c["layout"] != "rows"]
    # keep the larger row tiles (register reuse) in both loop orders, and every tiny-plane variant
    rows.sort(key=lambda c: (-(c["rows"] * c["vecs"]), c["order"]))
    # and the dense conv's best schedules of two kernel families (Winograd with the zeros in place
    # can beat 4 of 9 taps), the untuned default first when it is a dense one
    dense = dense_conv.schedules(**dense_args(step, target))[:DENSE_CANDIDATES]
    default = _pattern_default(step, target)
    if default is not None:
        dense = [default] + [d for d in dense if d != default][:DENSE_CANDIDATES - 1]
    own = flat + rows[: MAX_CANDIDATES - len(flat)]
    return dense + own if default is not None else own + dense


# ---- grouped 1x1 conv (virtual 3x3 kernels: compiler/grouped.py) -----------------------------
def _grouped_matches(node: Node) -> dict | None:
    a = node.attrs
    if not _conv(node) or a["k"] != 1 or a["padding"] != 0 or a["stride"] not in (1, 2):
        return None
    sp = grouped_sparsity(node.params["weight"], node.name)
    return None if sp is None else {"sparsity": sp}


def _grouped_generate(step: Step, schedule: dict | None, target: Target, threads: int | None) -> GeneratedKernel:
    n, a = step.node, step.node.attrs
    return grouped1x1.gen_grouped1x1(step.cname, n.params["weight"], stride=a["stride"], where=n.name,
                                     sparsity=step.sparsity, **_common(step, schedule, target))


def _grouped_candidates(step: Step, target: Target, threads: int | None) -> list[dict]:
    o = step.out_layout
    return grouped1x1.schedules(stride=step.node.attrs["stride"], Ho=o.H, Wo=o.W, target=target,
                                channels=step.in_layout.C, fmas=kept_weights(step.sparsity))[:MAX_CANDIDATES]


# ---- dense convs ------------------------------------------------------------------------------
def _conv2d_generate(step: Step, schedule: dict | None, target: Target, threads: int | None) -> GeneratedKernel:
    a = step.node.attrs
    return dense_conv.gen_conv2d(step.cname, cin=step.in_layout.C, cout=_out_channels(step), k=a["k"],
                                 stride=a["stride"], padding=a["padding"], images=step.images,
                                 **_common(step, schedule, target))


def _conv2d_candidates(step: Step, target: Target, threads: int | None) -> list[dict]:
    # the same ranking the untuned default comes from (input channels and kernel size decide it),
    # so the default is always among the candidates measured
    return dense_conv.schedules(**dense_args(step, target))[:MAX_CANDIDATES]


def _conv_pool_generate(step: Step, schedule: dict | None, target: Target, threads: int | None) -> GeneratedKernel:
    n, a = step.node, step.node.attrs
    p = a["pool"]
    return conv_pool.gen_conv_maxpool(step.cname, cin=step.in_layout.C, cout=_out_channels(step), k=a["k"],
                                      stride=a["stride"], padding=a["padding"], pool_k=p["k"],
                                      pool_stride=p["stride"], pool_padding=p["padding"],
                                      in_layout=step.in_layout, out_layout=step.out_layout, act=n.act,
                                      target=target, schedule=schedule)


def _pw_dw_matches(node: Node) -> dict | None:
    """A fused 1x1 + depthwise node; its expand's grouped sparsity when it is pruned so."""
    if not _conv(node, fused="expand"):
        return None
    return {"sparsity": grouped_sparsity(node.params["expand_weight"], node.name)}


def _pw_dw_generate(step: Step, schedule: dict | None, target: Target, threads: int | None) -> GeneratedKernel:
    n, a = step.node, step.node.attrs
    project = None if "project" not in a else pw_dw.Project(
        n.params["project_weight"], n.params["project_bias"], a["project"]["act"],
        grouped_sparsity(n.params["project_weight"], n.name))
    return pw_dw.gen_pw_dw(step.cname, expand_weight=n.params["expand_weight"], expand_sparsity=step.sparsity,
                           expand_bias=n.params["expand_bias"], expand_act=a["expand"]["act"], k=a["k"],
                           stride=a["stride"], padding=a["padding"], in_layout=step.in_layout,
                           out_layout=step.out_layout, act=n.act, target=target, schedule=schedule,
                           has_residual=n.residual is not None, taps=depthwise.kept_taps(n.params["weight"]),
                           project=project)


def _pw_dw_candidates(step: Step, target: Target, threads: int | None) -> list[dict]:
    return pw_dw.tiles(step.node.params["expand_weight"].shape[0], step.in_layout.W, step.in_layout.C, target,
                       grouped=step.sparsity is not None, fmas=kept_weights(step.sparsity))[:MAX_CANDIDATES]


def _depthwise_matches(node: Node) -> dict | None:
    w = node.params.get("weight")
    ok = _conv(node, groups1=False) and node.attrs["groups"] == w.shape[0] and w.shape[1] == 1 and \
        node.attrs["k"] % 2 == 1 and node.attrs["stride"] <= 2
    return {} if ok else None


def _depthwise_generate(step: Step, schedule: dict | None, target: Target, threads: int | None) -> GeneratedKernel:
    a = step.node.attrs
    return depthwise.gen_depthwise(step.cname, channels=_out_channels(step), k=a["k"], stride=a["stride"],
                                   padding=a["padding"], taps=depthwise.kept_taps(step.node.params["weight"]),
                                   **_common(step, schedule, target))


def _depthwise_candidates(step: Step, target: Target, threads: int | None) -> list[dict]:
    cpu = target.require_cpu("depthwise")
    return depthwise.schedules(stride=step.node.attrs["stride"], out_layout=step.out_layout, vl=cpu.lanes,
                               registers=cpu.vector_registers, taps=depthwise.kept_taps(step.node.params["weight"]))


# ---- the rest ---------------------------------------------------------------------------------
def _op(name: str) -> Callable[[Node], dict | None]:
    return lambda node: {} if node.op == name else None


def _linear_generate(step: Step, schedule: dict | None, target: Target, threads: int | None) -> GeneratedKernel:
    w = step.node.params["weight"]
    return gemm.gen_linear(step.cname, in_features=w.shape[1], out_features=w.shape[0],
                           **_common(step, schedule, target))


def _window_pool(gen: Callable, options: tuple[str, ...], **extra_of_step: Callable[[Step], object]):
    """``options``: the node attributes (pool settings other than the defaults) passed on."""
    def generate(step: Step, schedule: dict | None, target: Target, threads: int | None) -> GeneratedKernel:
        a = step.node.attrs
        extra = {k: f(step) for k, f in extra_of_step.items()}
        extra.update({k: a[k] for k in options if k in a})
        return gen(step.cname, k=a["k"], stride=a["stride"], padding=a["padding"], **extra,
                   **_common(step, schedule, target))
    return generate


def _gap_generate(step: Step, schedule: dict | None, target: Target, threads: int | None) -> GeneratedKernel:
    return pool.gen_global_avgpool(step.cname, **_common(step, schedule, target))


def _channelwise_generate(step: Step, schedule: dict | None, target: Target, threads: int | None) -> GeneratedKernel:
    return channelwise.gen_channelwise(step.cname, mode=step.node.op, **_common(step, schedule, target))


def _binary_generate(step: Step, schedule: dict | None, target: Target, threads: int | None) -> GeneratedKernel:
    return channelwise.gen_binary(step.cname, op=step.node.attrs["op"], in_layout=step.in_layout,
                                  other_layout=step.other_layout, out_layout=step.out_layout, act=step.node.act,
                                  target=target)


def _concat_generate(step: Step, schedule: dict | None, target: Target, threads: int | None) -> GeneratedKernel:
    return channels.gen_concat(step.cname, operands=step.operands, out_layout=step.out_layout, target=target)


def _slice_generate(step: Step, schedule: dict | None, target: Target, threads: int | None) -> GeneratedKernel:
    return channels.gen_slice(step.cname, start=step.node.attrs["start"], in_layout=step.in_layout,
                              out_layout=step.out_layout, target=target)


def _pad_generate(step: Step, schedule: dict | None, target: Target, threads: int | None) -> GeneratedKernel:
    a, L = step.node.attrs, step.in_layout
    t, left, b, r = a["pads"]
    dh, dw = a.get("dilation", (1, 1))
    return movement.gen_remap(step.cname, rows=movement.pad_taps(L.H, t, b, a["mode"], dh),
                              cols=movement.pad_taps(L.W, left, r, a["mode"], dw), value=a["value"],
                              in_layout=L, out_layout=step.out_layout, target=target)


def _resize_generate(step: Step, schedule: dict | None, target: Target, threads: int | None) -> GeneratedKernel:
    a, L, O = step.node.attrs, step.in_layout, step.out_layout
    scales = a.get("scales", (None, None))
    rows, cols = (movement.resize_taps(n, m, a["mode"], a["align_corners"], s)
                  for n, m, s in ((L.H, O.H, scales[0]), (L.W, O.W, scales[1])))
    return movement.gen_remap(step.cname, rows=rows, cols=cols, in_layout=L, out_layout=O, target=target)


def _phases_generate(step: Step, schedule: dict | None, target: Target, threads: int | None) -> GeneratedKernel:
    a, L, O = step.node.attrs, step.in_layout, step.out_layout
    n_h, n_w = (O.H, O.W) if a["inverse"] else (L.H, L.W)
    taps = [movement.phase_taps(n, a["d"], a["inverse"], a["half"], a["packed"]) for n in (n_h, n_w)]
    return movement.gen_remap(step.cname, rows=taps[0], cols=taps[1], in_layout=L, out_layout=O, target=target)


def _movement(gen: Callable, attr: str):
    """The generator of a one-attribute data movement op (pixel shuffle, channel shuffle, softmax)."""
    def generate(step: Step, schedule: dict | None, target: Target, threads: int | None) -> GeneratedKernel:
        return gen(step.cname, **{attr: step.node.attrs[attr]}, in_layout=step.in_layout,
                   out_layout=step.out_layout, target=target)
    return generate


FAMILIES: tuple[KernelFamily, ...] = (
    KernelFamily("conv_pool", lambda n: {} if _conv(n, fused="pool") else None, _conv_pool_generate),
    KernelFamily("pw_dw", _pw_dw_matches, _pw_dw_generate, _pw_dw_candidates),
    KernelFamily("pattern_conv", _pattern_matches, _pattern_generate, _pattern_candidates),
    KernelFamily("grouped1x1", _grouped_matches, _grouped_generate, _grouped_candidates),
    KernelFamily("conv2d", lambda n: {} if _conv(n) else None, _conv2d_generate, _conv2d_candidates),
    KernelFamily("depthwise", _depthwise_matches, _depthwise_generate, _depthwise_candidates),
    KernelFamily("linear", _op("linear"), _linear_generate),
    KernelFamily("maxpool", _op("maxpool"), _window_pool(pool.gen_maxpool, ("ceil_mode", "dilation"),
                                                         input_nonneg=lambda s: s.input_nonneg)),
    KernelFamily("avgpool", _op("avgpool"), _window_pool(pool.gen_avgpool, ("ceil_mode", "count_include_pad"))),
    KernelFamily("gap", _op("gap"), _gap_generate),
    KernelFamily("channelwise", lambda n: {} if n.op in channelwise.MODES else None, _channelwise_generate),
    KernelFamily("binary", _op("binary"), _binary_generate),
    KernelFamily("concat", _op("concat"), _concat_generate),
    KernelFamily("slice", _op("slice"), _slice_generate),
    KernelFamily("pad", _op("pad"), _pad_generate),
    KernelFamily("resize", _op("resize"), _resize_generate),
    KernelFamily("pixel_shuffle", _op("pixel_shuffle"), _movement(movement.gen_pixel_shuffle, "r")),
    KernelFamily("shuffle", _op("shuffle"), _movement(channels.gen_shuffle, "groups")),
    KernelFamily("softmax", _op("softmax"), _movement(softmax.gen_softmax, "log")),
    KernelFamily("phases", _op("phases"), _phases_generate),
)
_BY_KIND = {f.kind: f for f in FAMILIES}


def match(node: Node) -> tuple[str, object]:
    """(family kind, the sparsity a pattern conv read from its weights or None) for ``node``;
    an UnsupportedError names the node and the reason when no family runs it."""
    for fam in FAMILIES:
        info = fam.matches(node)
        if info is not None:
            return fam.kind, info.get("sparsity")
    a = node.attrs
    if node.op == "conv":
        raise UnsupportedError(f"layer {node.name!r}: grouped conv (groups={a['groups']}, "
                               f"kernel {a['k']}) is not supported; depthwise and groups=1 are")
    raise UnsupportedError(f"layer {node.name!r}: op {node.op!r} has no kernel generator")


def generate(step: Step, schedule: dict | None, target: Target, threads: int | None = None) -> GeneratedKernel:
    """The kernel of ``step`` (``schedule`` None: the family's default) for ``target``."""
    return _BY_KIND[step.kind].generate(step, schedule, target, threads)


def candidates(step: Step, target: Target, threads: int | None = None) -> list[dict]:
    """Schedules worth measuring for ``step`` on ``target`` (empty: nothing to tune)."""
    return _BY_KIND[step.kind].candidates(step, target, threads)
