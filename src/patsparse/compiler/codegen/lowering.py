"""Target-dependent fusions, applied to a graph after its portable form is saved.

The saved IR (a compiled model's graph.json) is the same for every target; lowering for a target
then folds, where that target's kernels were measured to win, a max pool into the dense conv
before it (conv_pool.py), a 1x1 conv into the depthwise conv after it and the 1x1 conv after
that into the same kernel (pw_dw.py: a whole inverted-residual block).
"""

from __future__ import annotations

import numpy as np

from ..grouped import grouped_sparsity
from ..ir import INPUT, Graph, Node
from ..passes import replace_uses
from ..target import Target
from .conv_pool import ACTS_NONNEG, MAX_MV
from .kernels import match

# a dense conv + max pool runs fused (conv_pool.py) when one channel group's weights fit in L1
CONV_POOL_MAX_WEIGHT_BYTES = 40 << 10
# a 1x1 conv + depthwise conv run fused (pw_dw.py) when the 1x1's output would not stay in a
# core's L2 and its weights stay in L1 during a row
PW_DW_MIN_TENSOR_BYTES = 1 << 20
PW_DW_MAX_WEIGHT_BYTES = 32 << 10
# and the 1x1 conv after it joins them (fuse_project) when its weights stay in L1 during a row;
# a whole block (expand, depthwise, project) fuses on smaller expanded tensors too where its
# project is pruned (grouped) and its expanded rows span at least two vectors (a one-vector row
# leaves too few independent FMAs)
PROJECT_MAX_WEIGHT_BYTES = 32 << 10
BLOCK_MIN_TENSOR_BYTES = 256 << 10
BLOCK_MIN_ROW_VECTORS = 2


def lower(g: Graph, target: Target) -> None:
    """Apply every fusion ``target`` profits from to ``g``, in place."""
    fuse_conv_pool(g, target)
    fuse_pw_dw(g, target)
    fuse_project(g)


def fuse_conv_pool(g: Graph, target: Target) -> None:
    """Fold a max pool into the dense conv before it (conv_pool.py) where that kernel applies:
    the conv ends in a ReLU/ReLU6, feeds only the pool (a floor-mode, undilated one), has no
    residual, and one group of its output channels' weights fits in L1 (the ImageNet stem). With
    16 registers too (AVX2, ResNet-18 at 224x224, one thread: the fused stem and pool took 2.03 ms
    in the model against 2.45 for the implicit GEMM and the pool kernel). The conv node takes the pool's output shape and an
    attribute ``pool`` = {k, stride, padding}; the pool node is removed."""
    cpu = target.require_cpu("conv + max pool fusion")
    for m in [n for n in g.nodes if n.op == "maxpool"]:
        src = m.inputs[0]
        prod = None if src == INPUT else g.node(src)
        if (prod is None or prod.op != "conv" or "pool" in prod.attrs or prod.act not in ACTS_NONNEG
                or prod.residual is not None or len(g.users(src)) != 1
                or m.act not in ("none", "relu") or m.residual is not None
                or m.attrs.get("ceil_mode") or m.attrs.get("dilation", 1) != 1):
            continue
        a, cin, k = m.attrs, prod.params["weight"].shape[1], prod.attrs["k"]
        if a["stride"] > a["k"] or 2 * a["padding"] > a["k"] or \
                cin * k * k * MAX_MV * cpu.lanes * 4 > CONV_POOL_MAX_WEIGHT_BYTES:
            continue
        if match(prod)[0] != "conv2d":  # last: for a 3x3 conv it reads the sparsity
            continue
        prod.attrs["pool"] = {"k": a["k"], "stride": a["stride"], "padding": a["padding"]}
        prod.shape = m.shape
        g.nodes.remove(m)
        replace_uses(g, m.name, prod.name)


def fuse_pw_dw(g: Graph, target: Target) -> None:
    """Fold a 1x1 conv into the depthwise conv after it (pw_dw.py) where the 1x1's output is too
    big to stay in L2 (MobileNet-V2's expand convs at 112x112 and 56x56), or the whole block
    fuses (project_of) with a pruned project on the smaller tensors and rows of BLOCK_MIN_*
    (MobileNet-V2 8x, one thread, 16 lanes: features.5-7 on 28x28 planes 196 -> 174 us fused,
    the 14x14 blocks up to 1.8x slower; at 2.25x, projects dense, features.6 1.16x slower), and
    that kernel applies:
    the 1x1 has stride 1, no padding, no residual and feeds only the depthwise conv, which has
    no residual. Measured with 32 vector registers only, so other ISAs keep two kernels. The
    depthwise node takes the 1x1's input, its weight and bias as params ``expand_weight`` and
    ``expand_bias``, and an attribute ``expand`` = {act}; the 1x1 node is removed."""
    cpu = target.require_cpu("1x1 + depthwise fusion")
    if cpu.vector_registers < 32:
        return
    for d in [n for n in g.nodes if n.op == "conv"]:
        src = d.inputs[0]
        e = None if src == INPUT else g.node(src)
        if (e is None or e.op != "conv" or d.residual is not None or e.residual is not None
                or "pool" in e.attrs or "expand" in e.attrs or len(g.users(src)) != 1):
            continue
        ea, da, w = e.attrs, d.attrs, d.params["weight"]
        if (ea["k"], ea["stride"], ea["padding"], ea["groups"]) != (1, 1, 0, 1) or \
                da["groups"] != w.shape[0] or w.shape[1] != 1 or da["stride"] > 2 or da["k"] > cpu.lanes:
            continue
        size = 4 * int(np.prod(e.shape))
        p = project_of(g, d)
        block = p is not None and grouped_sparsity(p.params["weight"]) is not None and \
            -(-e.shape[2] // cpu.lanes) >= BLOCK_MIN_ROW_VECTORS
        if weight_bytes(e.params["weight"]) > PW_DW_MAX_WEIGHT_BYTES or \
                size < (min(PW_DW_MIN_TENSOR_BYTES, BLOCK_MIN_TENSOR_BYTES) if block else PW_DW_MIN_TENSOR_BYTES):
            continue
        d.params["expand_weight"] = e.params["weight"]
        d.params["expand_bias"] = e.params.get("bias", np.zeros(w.shape[0], np.float32))
        d.attrs["expand"] = {"act": e.act}
        d.inputs = list(e.inputs)
        g.nodes.remove(e)


def weight_bytes(w: np.ndarray) -> int:
    """Bytes a 1x1 conv's kernel reads per row: its packed weights (an offset per kept weight
    for the grouped kernel, compiler.grouped), else the dense weights."""
    return 8 * int(np.count_nonzero(w)) if grouped_sparsity(w) is not None else 4 * w.size


def project_of(g: Graph, d: Node) -> Node | None:
    """The 1x1 conv that can join the depthwise node ``d`` into a whole block (fuse_project):
    stride 1, no padding, fed by ``d`` alone, its weights in L1 during a row, a residual it
    carries computed before ``d``; else None."""
    users = g.users(d.name)
    p = users[0] if len(users) == 1 else None
    if p is None or g.output == d.name or p.op != "conv" or p.inputs != [d.name] or d.residual is not None:
        return None
    order = {n.name: i for i, n in enumerate(g.nodes)}
    order[INPUT] = -1
    a = p.attrs
    if ("pool" in a or "expand" in a or (a["k"], a["stride"], a["padding"], a["groups"]) != (1, 1, 0, 1)
            or weight_bytes(p.params["weight"]) > PROJECT_MAX_WEIGHT_BYTES
            or (p.residual is not None and order[p.residual] >= order[d.name])):
        return None
    return p


def fuse_project(g: Graph) -> None:
    """Fold the 1x1 conv after a fused 1x1 + depthwise node into it (project_of: an
    inverted-residual block's project conv and its residual add, pw_dw.py), so the depthwise
    output never leaves the thread (a row of it is projected as soon as it exists). The node
    takes the 1x1's weight and bias as params ``project_weight`` and ``project_bias``, an
    attribute ``project`` = {act}, its residual and output shape; the 1x1 node is removed."""
    for d in [n for n in g.nodes if "expand" in n.attrs and "project" not in n.attrs]:
        p = project_of(g, d)
        if p is None:
            continue
        d.params["project_weight"] = p.params["weight"]
        d.params["project_bias"] = p.params.get("bias", np.zeros(p.params["weight"].shape[0], np.float32))
        d.attrs["project"] = {"act": p.act}
        d.residual, d.shape = p.residual, p.shape
        g.nodes.remove(p)
        replace_uses(g, p.name, d.name)
