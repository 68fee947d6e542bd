"""Lower a fused IR graph (after the portable passes: BN folded, activations and residual adds
fused) to OpenCL: kernel per layer, layouts, workspace offsets, weights blob, program source.

Kernel families (codegen.kernels.match), layouts and buffer reuse (codegen.plan) and the weights
blob (codegen.graph.pack_blob) are the CPU path's, so a layer reads and writes activations
exactly as the C kernels do. The plan is of the portable graph: the CPU lowering's fusions
(codegen/lowering.py: conv + max pool, 1x1 + depthwise) are not applied, they were chosen for
CPU caches and registers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import UnsupportedError
from ..capture import block_diagonal
from ..codegen.kernels import match
from ..codegen.plan import assign_buffers, tensor_layouts
from ..ir import INPUT, Graph, Node, c_comment, c_ident
from ..layout import Layout
from ..reorder import LayerSparsity
from .common import HEADER, CLKernel
from .dense import gen_conv, gen_copy, gen_depthwise, gen_gap, gen_linear, gen_pool
from .device import OpenCLDevice
from .pattern import gen_pattern_conv
from .schedule import check_fits, default_schedule

COPY_IN, COPY_OUT = "ps_copy_in", "ps_copy_out"


@dataclass
class CLStep:
    """One kernel launch of the forward pass (field names shared with codegen.graph.Step, so
    its ``pack_blob`` packs the weights)."""

    node: Node
    index: int
    kind: str
    cname: str
    in_layout: Layout
    out_layout: Layout
    sparsity: LayerSparsity | None = None
    kernel: CLKernel | None = None
    w_off: int = 0
    b_off: int = 0

    @property
    def stride(self) -> int:
        return int(self.node.attrs.get("stride", 1))


@dataclass
class CLPlan:
    graph: Graph
    steps: list[CLStep]
    layouts: dict[str, Layout]
    offsets: dict[str, int]       # tensor -> workspace offset of ONE image (floats); N images: N * it
    ws_floats: int
    blob_floats: int = 0
    copy_in: CLKernel | None = None
    copy_out: CLKernel | None = None
    line_owner: list[tuple[int, int, str]] = field(default_factory=list)  # (first, last line, layer)


# the CPU kernel families this target has OpenCL kernels for, and what their epilogue applies
CL_KINDS = ("pattern_conv", "grouped1x1", "conv2d", "depthwise", "maxpool", "avgpool", "linear", "gap")
CL_ACTS = ("none", "relu", "relu6")


def _check_opencl(node, kind: str) -> None:
    """UnsupportedError for a layer the OpenCL kernels cannot run as the CPU ones do (an op
    family, activation or pooling option they lack), rather than code that computes another op."""
    why = (f"{kind} has no OpenCL kernel" if kind not in CL_KINDS else
           f"activation {node.act!r} is not in the OpenCL epilogue ({', '.join(CL_ACTS)})" if node.act not in CL_ACTS
           else "pooling with ceil_mode, dilation or count_include_pad=False" if
           {"ceil_mode", "dilation", "count_include_pad"} & set(node.attrs) else "")
    if why:
        raise UnsupportedError(f"layer {node.name!r}: {why} (target 'opencl'; the CPU targets run it)")


def plan_graph(g: Graph) -> CLPlan:
    """Kernel family, layouts and workspace offsets of every layer; every unsupported layer is
    an error here, before any source exists."""
    for n in g.nodes:  # the OpenCL depthwise kernel is 3x3: a wider one runs as a dense conv
        if n.op == "conv" and n.attrs["groups"] > 1 and n.attrs["k"] != 3:
            n.params["weight"] = block_diagonal(n.params["weight"], n.attrs["groups"])
            n.attrs["groups"] = 1
    kinds = {n.name: match(n) for n in g.nodes}
    for n in g.nodes:
        _check_opencl(n, kinds[n.name][0])
    layouts = tensor_layouts(g)
    steps = [CLStep(n, i, kinds[n.name][0], c_ident(n.name, i), layouts[n.inputs[0]], layouts[n.name],
                    sparsity=kinds[n.name][1]) for i, n in enumerate(g.nodes)]
    offsets, ws = assign_buffers(g, layouts)
    return CLPlan(g, steps, layouts, offsets, ws)


def generate(step: CLStep, schedule: dict) -> CLKernel:
    """The kernel of ``step`` under ``schedule``."""
    n, a = step.node, step.node.attrs
    common = dict(in_layout=step.in_layout, out_layout=step.out_layout, act=n.act,
                  has_residual=n.residual is not None, schedule=schedule)
    if step.kind in ("pattern_conv", "grouped1x1"):
        return gen_pattern_conv(step.cname, sparsity=step.sparsity, stride=a["stride"], padding=a["padding"],
                                where=n.name, grouped=step.kind == "grouped1x1", **common)
    if step.kind == "conv2d":
        w = n.params["weight"]
        return gen_conv(step.cname, cin=w.shape[1], cout=w.shape[0], k=a["k"], stride=a["stride"],
                        padding=a["padding"], **common)
    if step.kind == "depthwise":
        return gen_depthwise(step.cname, channels=step.out_layout.C, stride=a["stride"], padding=a["padding"],
                             **common)
    if step.kind in ("maxpool", "avgpool"):
        return gen_pool(step.cname, op=step.kind, k=a["k"], stride=a["stride"], padding=a["padding"], **common)
    if step.kind == "linear":
        w = n.params["weight"]
        return gen_linear(step.cname, in_features=w.shape[1], out_features=w.shape[0], **common)
    return gen_gap(step.cname, **common)


def generate_all(plan: CLPlan, device: OpenCLDevice, schedules: dict[str, dict] | None = None,
                 check: bool = True) -> None:
    """Every step's kernel (``schedules`` by kernel name override the device's defaults and,
    with ``check``, must fit the device) and the input / output copies; codegen.graph.pack_blob
    then packs the weights and sets each step's offsets."""
    schedules = schedules or {}
    for s in plan.steps:
        sched = schedules.get(s.cname) or default_schedule(s.kind, s.in_layout, s.out_layout, s.stride, device)
        if check:
            check_fits(s.kind, sched, s.stride, device, s.node.name)
        s.kernel = generate(s, sched)
    plan.copy_in = gen_copy(COPY_IN, plan.layouts[INPUT], to_layout=True)
    plan.copy_out = gen_copy(COPY_OUT, plan.layouts[plan.graph.output], to_layout=False)


def emit_source(plan: CLPlan) -> str:
    """The program: header, the two copies, one kernel per layer. Records which source lines
    belong to which layer, so a build error names the layer."""
    parts = [HEADER, plan.copy_in.code, plan.copy_out.code]
    plan.line_owner = []
    line = sum(p.count("\n") + 1 for p in parts) + 1
    for s in plan.steps:
        code = f"/* {c_comment(s.node.name)}: {s.kind} */\n" + s.kernel.code
        n_lines = code.count("\n") + 1
        plan.line_owner.append((line, line + n_lines - 1, s.node.name))
        parts.append(code)
        line += n_lines
    return "\n".join(parts) + "\n"


def layer_at_line(plan: CLPlan, line: int) -> str | None:
    for first, last, name in plan.line_owner:
        if first <= line <= last:
            return name
    return None
