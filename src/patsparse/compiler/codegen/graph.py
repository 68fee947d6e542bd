"""The whole model as one C translation unit with one entry point: no Python between layers.

``generate_kernels`` runs every step's generator (kernels.py) on a plan (plan.py), ``emit_model``
writes the source, ``pack_blob`` packs every layer's weights into one float blob.

Entry point (per call, ``batch`` images, NCHW float input and output, run in blocks of
``plan.images`` images: emit_model)::

    void ps_forward(const float *x, float *y, int batch, float *ws, const float *blob, int nthreads,
                    double *prof)

``ws`` must be zeroed once before its first use and used by one call at a time (the runtime
keeps one per Python thread); its last 64 bytes hold the team's state (barrier, scratch arenas,
solo fallback: base.PRELUDE), and ``ps_release(ws)`` frees its arenas when the workspace goes. ``prof`` is NULL, or one double per step to which each step adds
its wall-clock seconds (the per-layer profile: one branch per layer when off).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..ir import INPUT, c_comment
from ..layout import Layout
from .base import prelude_c
from .kernels import generate
from .pattern_conv import support_c
from .plan import ALIGN
from .step import Plan, Step


def generate_kernels(plan: Plan, schedules: dict[str, dict] | None = None) -> None:
    """Generate every step's kernel (``schedules`` by C name overrides the defaults)."""
    schedules = schedules or {}
    for s in plan.steps:
        s.kernel = generate(s, schedules.get(s.cname), plan.target, plan.threads)
        plan.schedules[s.cname] = dict(s.kernel.schedule)


def _copy_image(lay: Layout, *, into_ws: bool) -> str:
    """An ``omp for`` over (image of the block, channel) copying NCHW rows between ``x``/``y`` at
    image n0 + b and the layout at ``buf`` in image b's workspace slot."""
    plane = lay.C * lay.H * lay.W
    ws_at = "buf + b * IMAGE + (ptrdiff_t)c * {ps} + (h + {pad}) * {ld} + {pad}".format(
        ps=lay.ps, pad=lay.pad, ld=lay.ld)
    io_at = f"{'x' if into_ws else 'y'} + (ptrdiff_t)(n0 + b) * {plane} + ((ptrdiff_t)c * {lay.H} + h) * {lay.W}"
    dst, src = (ws_at, io_at) if into_ws else (io_at, ws_at)
    return (f"        #pragma omp for schedule(static) nowait\n"
            f"        for (int q = 0; q < nb * {lay.C}; q++) {{\n"
            f"            const int b = q / {lay.C}, c = q % {lay.C};\n"
            f"            for (int h = 0; h < {lay.H}; h++) memcpy({dst}, {src}, {lay.W} * sizeof(float));\n"
            f"        }}")


SYNC_FLOATS = 16  # the team's ps_sync (64 bytes) after the activations in the workspace


LAYER_MAJOR_RATIO = 2  # weights / one image's activations from which a layer runs layer-major


def layer_major(s: Step) -> bool | None:
    """Whether step ``s`` runs layer-major in a block (None: no weights, it follows the step
    before): where its packed weights are over LAYER_MAJOR_RATIO times one image's input and
    output.

    Why not every layer: layer-major reads each layer's weights once per block, but a layer's
    input then comes from the block's activations, which leave L2 where planes are large (VGG's
    32x32 layers hold 0.4 MB an image). VGG-16 CIFAR dense at batch 8 (in one process against
    the image-by-image build): its 32x32 layers ran about 3x slower layer-major, 128->128 at
    16x16 (weights as big as its activations) 1.3x slower, 128->256 at 8x8 (weights 5x) 1.2x
    faster, the 4x4 and 2x2 layers (weights 30-300x) 1.5-1.9x faster."""
    weights = s.b_off - s.w_off  # packed weights, padded (pack_blob)
    if weights <= ALIGN:
        return None
    return weights > LAYER_MAJOR_RATIO * (s.in_layout.size + s.out_layout.size)


def segments(plan: Plan) -> list[tuple[bool, list[Step]]]:
    """The steps in runs of (layer-major, steps): image-major runs take one image through all
    their steps before the next image, layer-major runs one step over the block.

    Each step is layer-major where layer_major says so; then a layer-major run goes back to
    image-major while its weights are at most LAYER_MAJOR_RATIO times the activations it puts
    in image slots (``_displaced``), the least paying run first.

    Why: a layer-major run between two image-major ones puts in image slots not only its own
    input and output but every tensor the two image-major runs pass across it (a residual), and
    those slots are cold for each image. ResNet-50 CIFAR 8x at batch 8 (one thread, in-process
    A/B against the image-by-image build): layer4's 1x1 convs after a layer-major 3x3 ran 2-2.7x
    slower (their 4x4 planes of 2048 channels take 0.8 MB an image padded), which cost more
    than the 3x3's weights, read once per block, saved (5-10%)."""
    steps = plan.steps
    major: list[bool] = []
    for s in steps:
        m = layer_major(s)
        major.append(major[-1] if m is None and major else bool(m))
    readers = _readers(plan)
    while True:
        runs = _runs(steps, major)
        worst, worst_ratio = None, LAYER_MAJOR_RATIO
        for k, (lm, run) in enumerate(runs):
            if not lm:
                continue
            weights = sum(max(0, s.b_off - s.w_off) for s in run)
            ratio = weights / max(1, _displaced(plan, run, major, readers))
            if ratio <= worst_ratio:
                worst, worst_ratio = k, ratio
        if worst is None:
            return runs
        for s in runs[worst][1]:
            major[s.index] = False


def _runs(steps: list[Step], major: list[bool]) -> list[tuple[bool, list[Step]]]:
    """``steps`` cut where ``major`` (per step index) changes."""
    runs: list[tuple[bool, list[Step]]] = []
    for s in steps:
        if runs and runs[-1][0] == major[s.index]:
            runs[-1][1].append(s)
        else:
            runs.append((major[s.index], [s]))
    return runs


def _readers(plan: Plan) -> dict[str, set[int]]:
    """tensor -> indices of the steps reading it (input, operand or residual); -1 for a concat
    (it reads every input from one slot base, so its operands never go to the shared slot)."""
    readers: dict[str, set[int]] = {}
    for s in plan.steps:
        n = s.node
        for t in n.inputs + ([n.residual] if n.residual else []):
            readers.setdefault(t, set()).add(-1 if s.operands is not None else s.index)
    return readers


def _internal(plan: Plan, steps: list[Step], readers: dict[str, set[int]]) -> set[str]:
    """The tensors ``steps`` produce and alone read (never the model's output)."""
    inside = {s.index for s in steps}
    return {s.node.name for s in steps
            if s.node.name != plan.graph.output and readers.get(s.node.name, set()) <= inside}


def _displaced(plan: Plan, run: list[Step], major: list[bool], readers: dict[str, set[int]]) -> int:
    """Floats of one image's tensors that a layer-major ``run`` puts in image slots: what its
    steps read and write, and what earlier steps pass across it to an image-major step after
    it (a residual skipping it). Image-major, most of them would sit in the shared slot."""
    first, last = run[0].index, run[-1].index
    names = {s.node.name for s in run}
    for s in run:
        names.update(s.node.inputs + ([s.node.residual] if s.node.residual else []))
    names.update(s.node.name for s in plan.steps[:first]
                 if any(r > last and not major[r] for r in readers.get(s.node.name, ())))
    names.discard(INPUT)
    return sum(plan.layouts[t].size for t in names)


def shared_tensors(plan: Plan) -> set[str]:
    """The tensors an image-major run keeps to itself: produced by one of its steps and read by
    its steps alone (not the model's output, not a concat's operand: a concat reads every input
    from one slot base). They live in one shared slot that every image of a block reuses, so
    an image-major run touches one image's worth of memory, warm in cache, as a batch of one
    does; only the tensors crossing a run's boundary need a slot per image. Empty where the
    plan has no shared slot (one image per block, or no room: plan.has_shared_slot)."""
    if not plan.shared_slot:
        return set()
    readers = _readers(plan)
    return set().union(*(_internal(plan, run, readers) for major, run in segments(plan) if not major))


def _call(s: Step, plan: Plan, base: Callable[[str | None], str], batched: bool) -> str:
    """C calling step ``s``, each tensor ``t`` at ``base(t)`` (a C pointer expression), batched:
    on the block's nb images."""
    n = s.node
    second = n.residual or (n.inputs[1] if len(n.inputs) > 1 else None)  # a binary op's b
    # a concat reads every input at its offset from the slot's base
    first = base(None) if s.operands is not None else f"{base(n.inputs[0])} + {plan.offsets[n.inputs[0]]}"
    res = f"{base(second)} + {plan.offsets[second]}" if second else "0"
    args = f"{first}, {base(n.name)} + {plan.offsets[n.name]}, blob + {s.w_off}, blob + {s.b_off}, {res}"
    return f"{s.cname}_nb({args}, nb, IMAGE);" if batched else f"{s.cname}({args});"


def _step_lines(s: Step, plan: Plan, major: bool, shared: set[str]) -> list[str]:
    """C lines running step ``s``, a barrier after it and its time added to ``prof``:
    layer-major, one call of a batched kernel or one call per image (a barrier after each
    unless the kernel is team_free); image-major, on image b (its ``shared`` tensors in the
    shared slot, the others in image b's)."""
    head = [f"        /* {c_comment(s.node.name)}: {s.kind} */"]
    prof = (f"if (prof && lead) {{ const double t1 = omp_get_wtime(); prof[{s.index}] += t1 - t0; "
            "t0 = t1; }")
    image = lambda t: "shared" if t in shared else "ws + b * IMAGE"  # noqa: E731
    if not major:
        return head + [f"        {_call(s, plan, image, False)}", "        ps_barrier();",
                       f"        {prof}"]
    if s.kernel.batched:
        return head + [f"        {_call(s, plan, lambda t: 'ws', True)}", "        ps_barrier();", f"        {prof}"]
    if s.kernel.team_free:  # one barrier after the block's images, not one per image
        return head + [f"        for (int b = 0; b < nb; b++) {_call(s, plan, image, False)}",
                       "        ps_barrier();", f"        {prof}"]
    return head + ["        for (int b = 0; b < nb; b++) {",
                   f"            {_call(s, plan, image, False)}",
                   "            ps_barrier();",
                   "        }", f"        {prof}"]


def emit_model(plan: Plan) -> str:
    """The whole model's C source (kernels must be generated).

    One OpenMP parallel region per call; inside it every thread runs every layer in turn and a
    ps_barrier (base.PRELUDE) separates the layers, so a forward pass costs one thread wake-up,
    not one per layer. The batch runs in blocks of ``plan.images`` images, image b of a block
    in workspace slot b (``plan.image_floats`` apart). Runs of layers whose weights outweigh
    their activations go layer by layer (each runs on every image of the block before the next:
    one call of a batched kernel, else one call per image), so their weights are fetched once
    per block, not once per image; the other runs take one image at a time through all their
    layers, as a batch of one does (``segments``).
    """
    g, lay_in, lay_out = plan.graph, plan.layouts[INPUT], plan.layouts[plan.graph.output]
    parts = [prelude_c(plan.target), support_c(plan.target)]
    parts += [s.kernel.code for s in plan.steps]
    body = ["void ps_forward(const float *restrict x, float *restrict y, int batch, float *restrict ws,",
            "                const float *restrict blob, int nthreads, double *restrict prof) {",
            f"    enum {{ IMAGES = {plan.images} }};",
            f"    const ptrdiff_t IMAGE = {plan.image_floats};  /* floats per image slot */",
            "    float *shared = ws + IMAGE * IMAGES; (void)shared;  /* shared_tensors' slot */",
            f"    ps_sync *sync = (ps_sync *)(ws + {plan.ws_floats});",
            "    double woke;  /* the team's wake-up over: what ps_team_adapt times */",
            "    const int team = ps_forward_team(sync, nthreads, &woke);",
            "    #pragma omp parallel num_threads(team)",
            "    {",
            "    ps_team_enter(sync);",
            "    const int lead = omp_get_thread_num() == 0;",
            "    /* blocks of equal size: 8 images in blocks of 6 run as 4 + 4, not 6 + 2 */",
            "    const int blocks = (batch + IMAGES - 1) / IMAGES, per = (batch + blocks - 1) / (blocks > 0 ? blocks : 1);",
            "    for (int n0 = 0; n0 < batch; n0 += per) {",
            "        const int nb = batch - n0 < per ? batch - n0 : per;",
            f"        {{ float *restrict buf = ws + {plan.offsets[INPUT]};",
            _copy_image(lay_in, into_ws=True), "        }",
            "        ps_block_start(n0 == 0, &woke);",
            "        double t0 = prof && lead ? omp_get_wtime() : 0.0;"]
    shared = shared_tensors(plan)
    for major, steps in segments(plan):
        lines = [x for s in steps for x in _step_lines(s, plan, major, shared)]
        body += lines if major else ["        for (int b = 0; b < nb; b++) {", *("    " + x for x in lines), "        }"]
    body += [f"        {{ const float *restrict buf = ws + {plan.offsets[g.output]};",
             _copy_image(lay_out, into_ws=False), "        }",
             "        ps_barrier();  /* the next block reuses the workspace */",
             "    }",
             "    ps_team_leave();",
             "    }",
             "    ps_team_adapt(sync, team, woke, omp_get_wtime(), batch);",
             "}",
             f"void ps_release(float *ws) {{ ps_team_release((ps_sync *)(ws + {plan.ws_floats})); }}",
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
        # the main conv's bias: one per output channel, but a fused block's is its depthwise's
        bias = np.asarray(n.params.get("bias", np.zeros(s.out_layout.C)), np.float32).ravel()
        for arr, attr in ((packed, "w_off"), (bias, "b_off")):
            setattr(s, attr, at)
            size = (arr.size + ALIGN - 1) // ALIGN * ALIGN or ALIGN
            buf = np.zeros(size, np.float32)
            buf[: arr.size] = arr
            chunks.append(buf)
            at += size
    plan.blob_floats = at
    return np.concatenate(chunks) if chunks else np.zeros(ALIGN, np.float32)
