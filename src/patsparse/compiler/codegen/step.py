"""Step and Plan: what the planner decided, as data (plan.py fills them, graph.py emits them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import Graph, Node
from ..layout import Layout
from ..reorder import LayerSparsity
from ..target import Target
from .base import GeneratedKernel


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
    other_layout: Layout | None = None  # a binary op's second operand (passed as ``res``)
    operands: list[tuple[int, Layout]] | None = None  # a concat's inputs: workspace offset, layout
    images: int = 1  # images per block of the forward pass (plan.image_block): batched kernels' pool
    kernel: GeneratedKernel | None = None
    w_off: int = 0
    b_off: int = 0


@dataclass
class Plan:
    graph: Graph
    steps: list[Step]
    layouts: dict[str, Layout]
    offsets: dict[str, int]     # tensor -> workspace offset within an image's slot (floats)
    ws_floats: int              # the activations of all slots ((images + shared_slot) * image_floats)
    target: Target
    blob_floats: int = 0
    threads: int | None = None  # the team size the model will run with (balances default schedules)
    schedules: dict[str, dict] = field(default_factory=dict)
    image_floats: int = 0       # one image's slot: image b's tensors live at b * image_floats + offset
    images: int = 1             # image slots: the block a batched forward pass runs layer by layer
    shared_slot: bool = False   # one more slot after them, for graph.shared_tensors

    @property
    def vl(self) -> int:
        """Floats per vector of the code this plan generates."""
        return self.target.require_cpu("plan").lanes
