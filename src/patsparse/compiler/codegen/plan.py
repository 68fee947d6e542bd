"""The planner: for a fused graph, which kernel runs each node, the activation layout of every
tensor, and where each tensor lives in one workspace.

Layouts: a tensor's halo is the largest padding any consumer needs, so a producer writes
straight into its consumers' layout and padding is free. Workspace reuse: a buffer is recycled
only for a tensor of the *same* layout. Kernels never write halos, so a halo zeroed once stays
zero for the life of the workspace; reusing a buffer for a different layout would put old
interior values where a halo should be zero.
"""

from __future__ import annotations

from ..ir import INPUT, Graph, Node, c_ident
from ..layout import Layout, spatial
from ..target import Target, detect
from .base import SLACK
from .kernels import match
from .lowering import lower
from .step import Plan, Step

ALIGN = 16  # floats
MAX_IMAGES = 8                 # images per block of a batched forward pass (image_block)
IMAGE_BLOCK_BYTES = 80 << 20   # workspace the image slots of one block may take together


def _required_pad(node: Node) -> int:
    if "expand" in node.attrs:  # the fused 1x1 conv reads its input without padding
        return 0
    return int(node.attrs.get("padding", 0)) if node.op in ("conv", "maxpool", "avgpool") else 0


def tensor_layouts(g: Graph) -> dict[str, Layout]:
    """The layout of every tensor of ``g`` (portable or lowered): its halo is the largest padding
    any consumer needs, and a residual is read in its consumer's output layout, so both share
    the larger halo. The OpenCL target plans its activations with it too."""
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
    return {t: Layout(*spatial(g.shape_of(t)), pad=p) for t, p in pads.items()}


def plan_graph(g: Graph, *, target: Target | None = None, threads: int | None = None) -> Plan:
    """Kernel choice, layouts and workspace offsets for a fused graph (see module docstring).

    It first lowers ``g`` for ``target`` (lowering.py: the target's fusions, in ``g`` itself;
    save the portable graph before). ``target``: what the code is for (default: this host,
    ``target.detect``)."""
    target = target or detect()
    lower(g, target)
    kinds = {n.name: match(n) for n in g.nodes}  # all errors before any code exists
    layouts = tensor_layouts(g)
    acts = {n.name: n.act for n in g.nodes}
    steps = [Step(n, i, kinds[n.name][0], c_ident(n.name, i), layouts[n.inputs[0]], layouts[n.name],
                  sparsity=kinds[n.name][1], input_nonneg=acts.get(n.inputs[0]) in ("relu", "relu6"),
                  other_layout=layouts[n.inputs[1]] if len(n.inputs) > 1 else None)
             for i, n in enumerate(g.nodes)]
    offsets, ws = assign_buffers(g, layouts)
    images = image_block(ws)
    for s in steps:
        s.images = images
        if s.node.op == "concat":  # its kernel reads every input at its workspace offset
            s.operands = [(offsets[i], layouts[i]) for i in s.node.inputs]
    shared = has_shared_slot(images, ws)
    return Plan(g, steps, layouts, offsets, (images + shared) * ws, target=target, threads=threads,
                image_floats=ws, images=images, shared_slot=shared)


def image_block(image_floats: int) -> int:
    """Images per block of a batched forward pass: the most, up to MAX_IMAGES, whose workspace
    slots (``image_floats`` each) and the shared slot fit IMAGE_BLOCK_BYTES together (two
    without the shared slot where three slots would not fit).

    Why blocks: the forward pass runs each layer on every image of a block before the next
    layer (graph.py), so a layer's weights come from memory once per block instead of once per
    image, and batched kernels put the block's images into one pool of tiles. Each image of a
    block needs its own activations, so the block is bounded to keep the workspace (allocated,
    and zeroed once, per calling thread) at a size a batch-1 caller does not notice: a
    CIFAR-sized VGG-16, ResNet-18 or ResNet-50 gets all 8 slots, an ImageNet ResNet-50 two."""
    fit = IMAGE_BLOCK_BYTES // max(1, 4 * image_floats)
    return max(1, min(MAX_IMAGES, fit - 1 if fit >= 3 else fit))


def has_shared_slot(images: int, image_floats: int) -> bool:
    """Whether a block of ``images`` images gets the slot image-major runs share
    (graph.shared_tensors): with more than one image, where it fits the budget."""
    return images > 1 and (images + 1) * 4 * image_floats <= IMAGE_BLOCK_BYTES


def assign_buffers(g: Graph, layouts: dict[str, Layout]) -> tuple[dict[str, int], int]:
    """(tensor -> workspace offset in floats, workspace size in floats) of one image, a buffer
    recycled after its tensor's last use for a later tensor of the same layout (module docstring)."""
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
