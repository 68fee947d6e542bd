"""The whole model as one C translation unit with one entry point: no Python between layers.

``plan_graph`` decides, per IR node, which generator runs it (pattern conv when the weights are
sparse enough to win, else the dense generators), the activation layout of every tensor (halo =
the largest padding any consumer needs, so a producer writes straight into its consumers'
layout and padding is free), and where each tensor lives in one workspace. ``emit_model``
writes the source; ``pack_blob`` packs every layer's weights into one float blob.

Workspace reuse: a buffer is recycled only for a tensor of the *same* layout. Kernels never
write halos, so a halo zeroed once stays zero for the life of the workspace; reusing a buffer
for a different layout would put old interior values where a halo should be zero.

Entry point (per call, ``batch`` images, NCHW float input and output)::

    void ps_forward(const float *x, float *y, int batch, float *ws, const float *blob, int nthreads,
                    double *prof)

``ws`` must be zeroed once before its first use and used by one call at a time (the runtime
keeps one per Python thread); its last 64 bytes hold the call's thread-team barrier. ``prof`` is NULL, or one double per step to which each step adds
its wall-clock seconds (the per-layer profile: one branch per layer when off).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np

from ...errors import UnsupportedError
from ..ir import INPUT, Graph, Node, c_comment, c_ident
from ..layout import Layout
from ..passes import replace_uses
from ..reorder import LayerSparsity, analyse
from .base import PRELUDE, SLACK, GeneratedKernel
from .common import vector_registers
from .conv_pool import ACTS_NONNEG, MAX_MV
from .pattern_conv import SUPPORT, gen_pattern_conv, host_vl

ALIGN = 16  # floats

# a 3x3 conv goes to the pattern kernel when it computes at most this share of the dense taps
PATTERN_MAX_DENSITY = 0.6
# a dense conv + max pool runs fused (conv_pool.py) when one channel group's weights fit in L1
CONV_POOL_MAX_WEIGHT_BYTES = 40 << 10
# a 1x1 conv + depthwise conv run fused (pw_dw.py) when the 1x1's output would not stay in a
# core's L2 and its weights stay in L1 during a row
PW_DW_MIN_TENSOR_BYTES = 1 << 20
PW_DW_MAX_WEIGHT_BYTES = 32 << 10


@dataclass
class Step:
    """One kernel call of the forward pass."""

    node: Node
    index: int
    kind: str                 # generator family, e.g. "pattern_conv", "conv2d", "linear"
    cname: str
    in_layout: Layout
    out_layout: Layout
    sparsity: LayerSparsity | None = None  # pattern convs: read from the weights once
    input_nonneg: bool = False  # its input ends in ReLU/ReLU6 (a max pool may pad with the halo)
    kernel: GeneratedKernel | None = None
    w_off: int = 0
    b_off: int = 0


@dataclass
class Plan:
    graph: Graph
    steps: list[Step]
    layouts: dict[str, Layout]
    offsets: dict[str, int]     # tensor -> workspace offset (floats)
    ws_floats: int
    blob_floats: int = 0
    vl: int = 8
    threads: int | None = None  # the team size the model will run with (balances default schedules)
    schedules: dict[str, dict] = field(default_factory=dict)


def _spatial(shape: tuple) -> tuple[int, int, int]:
    return tuple(shape) if len(shape) == 3 else (int(np.prod(shape)), 1, 1)


def kernel_kind(node: Node) -> tuple[str, LayerSparsity | None]:
    """Which generator family runs ``node`` (an UnsupportedError names node and reason), and
    for a pattern conv the sparsity read from its weights."""
    a = node.attrs
    if node.op == "conv":
        w = node.params["weight"]
        F, Cg = w.shape[:2]
        if "pool" in a:  # fused by fuse_conv_pool
            return "conv_pool", None
        if "expand" in a:  # fused by fuse_pw_dw
            return "pw_dw", None
        if a["groups"] == 1:
            if a["k"] == 3 and a["stride"] in (1, 2):
                sp = analyse(w, node.name)
                density = sp.taps_per_kernel().sum() / max(1, 9 * F * Cg)
                if density <= PATTERN_MAX_DENSITY:
                    return "pattern_conv", sp
            return "conv2d", None
        if a["groups"] == F and Cg == 1 and a["k"] == 3:
            return "depthwise", None
        raise UnsupportedError(f"layer {node.name!r}: grouped conv (groups={a['groups']}, "
                               f"kernel {a['k']}) is not supported; depthwise 3x3 and groups=1 are")
    return {"linear": "linear", "maxpool": "maxpool", "avgpool": "avgpool", "gap": "gap"}[node.op], None


def fuse_conv_pool(g: Graph, vl: int) -> None:
    """Fold a max pool into the dense conv before it (conv_pool.py) where that kernel applies:
    the conv ends in a ReLU/ReLU6, feeds only the pool, has no residual, and one group of its
    output channels' weights fits in L1 (the ImageNet stem). Measured with 32 vector registers
    only, so other ISAs keep two kernels. The conv node takes the pool's output shape and an
    attribute ``pool`` = {k, stride, padding}; the pool node is removed."""
    if vector_registers(vl) < 32:
        return
    for m in [n for n in g.nodes if n.op == "maxpool"]:
        src = m.inputs[0]
        prod = None if src == INPUT else g.node(src)
        if (prod is None or prod.op != "conv" or "pool" in prod.attrs or prod.act not in ACTS_NONNEG
                or prod.residual is not None or len(g.users(src)) != 1
                or m.act not in ("none", "relu") or m.residual is not None):
            continue
        a, cin, k = m.attrs, prod.params["weight"].shape[1], prod.attrs["k"]
        if a["stride"] > a["k"] or 2 * a["padding"] > a["k"] or \
                cin * k * k * MAX_MV * vl * 4 > CONV_POOL_MAX_WEIGHT_BYTES:
            continue
        if kernel_kind(prod)[0] != "conv2d":  # last: for a 3x3 conv it reads the sparsity
            continue
        prod.attrs["pool"] = {"k": a["k"], "stride": a["stride"], "padding": a["padding"]}
        prod.shape = m.shape
        g.nodes.remove(m)
        replace_uses(g, m.name, prod.name)


def fuse_pw_dw(g: Graph, vl: int) -> None:
    """Fold a 1x1 conv into the depthwise conv after it (pw_dw.py) where the 1x1's output is too
    big to stay in L2 (MobileNet-V2's expand convs at 112x112 and 56x56) and that kernel applies:
    the 1x1 has stride 1, no padding, no residual and feeds only the depthwise conv, which has
    no residual. Measured with 32 vector registers only, so other ISAs keep two kernels. The
    depthwise node takes the 1x1's input, its weight and bias as params ``expand_weight`` and
    ``expand_bias``, and an attribute ``expand`` = {act}; the 1x1 node is removed."""
    if vector_registers(vl) < 32:
        return
    for d in [n for n in g.nodes if n.op == "conv"]:
        src = d.inputs[0]
        e = None if src == INPUT else g.node(src)
        if (e is None or e.op != "conv" or d.residual is not None or e.residual is not None
                or "pool" in e.attrs or "expand" in e.attrs or len(g.users(src)) != 1):
            continue
        ea, da, w = e.attrs, d.attrs, d.params["weight"]
        if (ea["k"], ea["stride"], ea["padding"], ea["groups"]) != (1, 1, 0, 1) or \
                da["groups"] != w.shape[0] or w.shape[1] != 1 or da["stride"] > 2 or da["k"] > vl:
            continue
        if 4 * int(np.prod(e.shape)) < PW_DW_MIN_TENSOR_BYTES or \
                4 * e.params["weight"].size > PW_DW_MAX_WEIGHT_BYTES:
            continue
        d.params["expand_weight"] = e.params["weight"]
        d.params["expand_bias"] = e.params.get("bias", np.zeros(w.shape[0], np.float32))
        d.attrs["expand"] = {"act": e.act}
        d.inputs = list(e.inputs)
        g.nodes.remove(e)


def _required_pad(node: Node) -> int:
    if "expand" in node.attrs:  # the fused 1x1 conv reads its input without padding
        return 0
    return int(node.attrs.get("padding", 0)) if node.op in ("conv", "maxpool", "avgpool") else 0


def tensor_layouts(g: Graph) -> dict[str, Layout]:
    """The layout of every tensor: halo = the largest padding any consumer needs (a residual is
    read in its consumer's output layout, so both share the larger halo)."""
    pads: dict[str, int] = {INPUT: 0, **{n.name: 0 for n in g.nodes}}
    for n in g.nodes:
        for i in n.inputs:
            pads[i] = max(pads[i], _required_pad(n))
    changed = True
    while changed:
        changed = False
        for n in g.nodes:
            if n.residual and pads[n.residual] != pads[n.name]:
                pads[n.residual] = pads[n.name] = max(pads[n.residual], pads[n.name])
                changed = True
    return {t: Layout(*_spatial(g.shape_of(t)), pad=p) for t, p in pads.items()}


def plan_graph(g: Graph, *, vl: int | None = None, threads: int | None = None) -> Plan:
    """Kernel choice, layouts and workspace offsets for a fused graph (see module docstring).

    It first folds max pools into the convs before them where conv_pool.py applies, and 1x1
    convs into the depthwise convs after them where pw_dw.py applies, in ``g`` itself, so the
    IR a compiled model stores is the one it was generated from."""
    vl = vl or host_vl()
    fuse_conv_pool(g, vl)
    fuse_pw_dw(g, vl)
    kinds = {n.name: kernel_kind(n) for n in g.nodes}  # all errors before any code exists
    layouts = tensor_layouts(g)
    acts = {n.name: n.act for n in g.nodes}
    steps = [Step(n, i, kinds[n.name][0], c_ident(n.name, i), layouts[n.inputs[0]], layouts[n.name],
                  sparsity=kinds[n.name][1], input_nonneg=acts.get(n.inputs[0]) in ("relu", "relu6"))
             for i, n in enumerate(g.nodes)]
    offsets, ws = _assign_buffers(g, layouts)
    return Plan(g, steps, layouts, offsets, ws, vl=vl, threads=threads)


def _assign_buffers(g: Graph, layouts: dict[str, Layout]) -> tuple[dict[str, int], int]:
    last_use = {INPUT: -1}
    for i, n in enumerate(g.nodes):
        for t in n.inputs + ([n.residual] if n.residual else []):
            last_use[t] = i
    last_use[g.output] = len(g.nodes)
    free: dict[Layout, list[int]] = {}
    offsets: dict[str, int] = {}
    top = 0

    def alloc(t: str) -> None:
        nonlocal top
        lay = layouts[t]
        if free.get(lay):
            offsets[t] = free[lay].pop()
        else:
            offsets[t] = top
            top += (lay.size + SLACK + ALIGN - 1) // ALIGN * ALIGN

    alloc(INPUT)
    for i, n in enumerate(g.nodes):
        alloc(n.name)
        # dict, not set: string hashes vary between processes, and the order here decides the
        # offsets, so a set made the source (the build cache key) differ from run to run
        for t in dict.fromkeys(n.inputs + ([n.residual] if n.residual else [])):
            if last_use.get(t) == i:
                free.setdefault(layouts[t], []).append(offsets[t])
    return offsets, top


def _generate(step: Step, schedule: dict | None, vl: int, threads: int | None = None) -> GeneratedKernel:
    n, a = step.node, step.node.attrs
    common = dict(in_layout=step.in_layout, out_layout=step.out_layout, act=n.act,
                  has_residual=n.residual is not None, schedule=schedule)
    if step.kind == "pattern_conv":
        return gen_pattern_conv(step.cname, n.params["weight"], stride=a["stride"], padding=a["padding"],
                                vl=vl, where=n.name, sparsity=step.sparsity, threads=threads, **common)
    F = n.params["weight"].shape[0] if "weight" in n.params else step.out_layout.C
    gen = _dense_generator(step.kind, n.name)
    if step.kind == "conv2d":
        return gen(step.cname, cin=step.in_layout.C, cout=F, k=a["k"], stride=a["stride"],
                   padding=a["padding"], **common)
    if step.kind == "conv_pool":
        pool = a["pool"]
        return gen(step.cname, cin=step.in_layout.C, cout=F, k=a["k"], stride=a["stride"],
                   padding=a["padding"], pool_k=pool["k"], pool_stride=pool["stride"],
                   pool_padding=pool["padding"], in_layout=step.in_layout, out_layout=step.out_layout,
                   act=n.act, vl=vl, schedule=schedule)
    if step.kind == "pw_dw":
        return gen(step.cname, expand_weight=n.params["expand_weight"], expand_bias=n.params["expand_bias"],
                   expand_act=a["expand"]["act"], k=a["k"], stride=a["stride"], padding=a["padding"],
                   in_layout=step.in_layout, out_layout=step.out_layout, act=n.act, vl=vl, schedule=schedule,
                   has_residual=n.residual is not None)
    if step.kind == "depthwise":
        return gen(step.cname, channels=F, stride=a["stride"], padding=a["padding"], **common)
    if step.kind == "linear":
        return gen(step.cname, in_features=n.params["weight"].shape[1], out_features=F, **common)
    if step.kind == "maxpool":
        return gen(step.cname, k=a["k"], stride=a["stride"], padding=a["padding"],
                   input_nonneg=step.input_nonneg, **common)
    if step.kind == "avgpool":
        return gen(step.cname, k=a["k"], stride=a["stride"], padding=a["padding"], **common)
    return gen(step.cname, **common)  # gap


# generator family -> (module, function) of the dense kernels (codegen/*.py)
DENSE_GENERATORS = {
    "conv2d": ("dense_conv", "gen_conv2d"),
    "conv_pool": ("conv_pool", "gen_conv_maxpool"),
    "depthwise": ("depthwise", "gen_depthwise"),
    "pw_dw": ("pw_dw", "gen_pw_dw"),
    "linear": ("gemm", "gen_linear"),
    "maxpool": ("pool", "gen_maxpool"),
    "avgpool": ("pool", "gen_avgpool"),
    "gap": ("pool", "gen_global_avgpool"),
}


def _dense_generator(kind: str, where: str):
    mod, fn = DENSE_GENERATORS[kind]
    try:
        return getattr(importlib.import_module(f"{__package__}.{mod}"), fn)
    except (ImportError, AttributeError) as e:
        raise UnsupportedError(f"layer {where!r}: needs the {kind} kernel ({mod}.{fn}), which is "
                               f"not available in this build: {e}") from e


def generate_kernels(plan: Plan, schedules: dict[str, dict] | None = None) -> None:
    """Generate every step's kernel (``schedules`` by C name overrides the defaults)."""
    schedules = schedules or {}
    for s in plan.steps:
        s.kernel = _generate(s, schedules.get(s.cname), plan.vl, plan.threads)
        plan.schedules[s.cname] = dict(s.kernel.schedule)


def _copy_in(lay: Layout) -> str:
    return (f"        #pragma omp for schedule(static) nowait\n"
            f"        for (int c = 0; c < {lay.C}; c++) for (int h = 0; h < {lay.H}; h++)\n"
            f"            memcpy(buf + (ptrdiff_t)c * {lay.ps} + (h + {lay.pad}) * {lay.ld} + {lay.pad}, "
            f"xn + ((ptrdiff_t)c * {lay.H} + h) * {lay.W}, {lay.W} * sizeof(float));")


def _copy_out(lay: Layout) -> str:
    return (f"        #pragma omp for schedule(static) nowait\n"
            f"        for (int c = 0; c < {lay.C}; c++) for (int h = 0; h < {lay.H}; h++)\n"
            f"            memcpy(yn + ((ptrdiff_t)c * {lay.H} + h) * {lay.W}, "
            f"buf + (ptrdiff_t)c * {lay.ps} + (h + {lay.pad}) * {lay.ld} + {lay.pad}, {lay.W} * sizeof(float));")


SYNC_FLOATS = 16  # the team's ps_sync (64 bytes) after the activations in the workspace


def emit_model(plan: Plan) -> str:
    """The whole model's C source (kernels must be generated).

    One OpenMP parallel region per call; inside it every thread runs every layer in turn and a
    ps_barrier (base.PRELUDE) separates the layers, so a forward pass costs one thread wake-up,
    not one per layer.
    """
    g, lay_in, lay_out = plan.graph, plan.layouts[INPUT], plan.layouts[plan.graph.output]
    parts = [PRELUDE, SUPPORT]
    parts += [s.kernel.code for s in plan.steps]
    body = ["void ps_forward(const float *restrict x, float *restrict y, int batch, float *restrict ws,",
            "                const float *restrict blob, int nthreads, double *restrict prof) {",
            "    if (nthreads > 0) omp_set_num_threads(nthreads);",
            f"    ps_sync *sync = (ps_sync *)(ws + {plan.ws_floats});",
            "    #pragma omp parallel",
            "    {",
            "    ps_team_enter(sync);",
            "    const int lead = omp_get_thread_num() == 0;",
            "    for (int n = 0; n < batch; n++) {",
            f"        const float *restrict xn = x + (ptrdiff_t)n * {lay_in.C * lay_in.H * lay_in.W};",
            f"        float *restrict yn = y + (ptrdiff_t)n * {lay_out.C * lay_out.H * lay_out.W};",
            f"        {{ float *restrict buf = ws + {plan.offsets[INPUT]};",
            _copy_in(lay_in), "        }",
            "        ps_barrier();",
            "        double t0 = prof && lead ? omp_get_wtime() : 0.0;"]
    for s in plan.steps:
        n = s.node
        res = f"ws + {plan.offsets[n.residual]}" if n.residual else "0"
        body.append(f"        /* {c_comment(n.name)}: {s.kind} */")
        body.append(f"        {s.cname}(ws + {plan.offsets[n.inputs[0]]}, ws + {plan.offsets[n.name]}, "
                    f"blob + {s.w_off}, blob + {s.b_off}, {res});")
        body.append("        ps_barrier();")
        body.append(f"        if (prof && lead) {{ const double t1 = omp_get_wtime(); prof[{s.index}] += t1 - t0; "
                    "t0 = t1; }")
    body += [f"        {{ const float *restrict buf = ws + {plan.offsets[g.output]};", _copy_out(lay_out), "        }",
             "        ps_barrier();  /* the next image reuses the workspace */",
             "    }",
             "    ps_team_leave();",
             "    }",
             "}",
             "int ps_vl(void) { return VL; }",
             f"long ps_workspace_floats(void) {{ return {plan.ws_floats + SYNC_FLOATS}L; }}",
             f"long ps_blob_floats(void) {{ return {plan.blob_floats}L; }}"]
    parts.append("\n".join(body))
    return "\n".join(parts) + "\n"


def pack_blob(plan: Plan) -> np.ndarray:
    """Every layer's packed weights and bias in one 64-byte-aligned-section float array;
    sets each step's offsets (call before ``emit_model``)."""
    chunks, at = [], 0
    for s in plan.steps:
        n = s.node
        if "weight" in n.params:
            packed = np.asarray(s.kernel.pack(n.params["weight"]), dtype=np.float32).ravel()
        else:
            packed = np.zeros(0, np.float32)
        bias = np.zeros(s.out_layout.C, np.float32)
        if "bias" in n.params:
            bias[:] = n.params["bias"]
        for arr, attr in ((packed, "w_off"), (bias, "b_off")):
            setattr(s, attr, at)
            size = (arr.size + ALIGN - 1) // ALIGN * ALIGN or ALIGN
            buf = np.zeros(size, np.float32)
            buf[: arr.size] = arr
            chunks.append(buf)
            at += size
    plan.blob_floats = at
    return np.concatenate(chunks) if chunks else np.zeros(ALIGN, np.float32)
