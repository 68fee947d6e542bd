"""The compiler's small network IR: a topologically ordered list of nodes on per-image tensors.

Why an IR of our own: torch.fx graphs and ONNX graphs both lower to it, the passes (BN folding,
activation / residual fusion) work on one representation, and it serialises to JSON + tensors,
so a compiled model can be regenerated on another machine without the original Python model.

Ops (attrs in brackets):
  conv     [stride, padding, groups, k]  params weight (F, C/g, k, k), bias (F,); the plan may add
           [pool: {k, stride, padding}]   (a max pool after it, fused: lowering.fuse_conv_pool)
           [expand: {act}]                (a depthwise conv with the 1x1 conv before it fused,
                                          params expand_weight, expand_bias: lowering.fuse_pw_dw)
           [project: {act}]               (and the 1x1 conv after it, params project_weight,
                                          project_bias: lowering.fuse_project)
  bn       [eps]                         params mean, var, gamma, beta (folded away by passes)
  linear   []                            params weight (out, in), bias (out,)
  maxpool / avgpool [k, stride, padding] and where not the default [ceil_mode] (True),
           [dilation] (max), [count_include_pad] (avg, False)
  gap      []                            global average pool to (C, 1, 1)
  add, relu, relu6, flatten, identity    (fused or dropped by passes)
  reshape  [shape]                       a view stored as its input is ((C,) <-> (C, 1, 1)); dropped
  concat   []                            any number of inputs joined along channels
  slice    [start, channels]             channels start .. start + channels (split / chunk)
  act      [act]                         any activation (codegen/activations.py: a string such as
                                         "sigmoid" or "leaky_relu:0.01"); fused or kept by passes
  prelu    []                            params weight (C,): one slope per channel
  affine   []                            params weight (C,), bias (C,): a BatchNorm with no conv
                                         before it (passes.fold_bn)
  binary   [op: add|sub|mul|div]         two inputs, PyTorch broadcasting over (C, H, W); an add
                                         no conv can take as its residual becomes one
  pad      [pads, mode, value]           pads (top, left, bottom, right; negative crops), mode
                                         constant | reflect | replicate (codegen/movement.py)
  resize   [size, mode, align_corners]   to size (H, W), mode nearest | bilinear; [scales] (sh, sw)
                                         where the model gave scale factors (PyTorch rounds by them)
  pixel_shuffle [r]                      (C * r * r, H, W) -> (C, H * r, W * r)
  shuffle  [groups]                      channel shuffle (ShuffleNet)
  softmax  [log]                         (log-)softmax over channels (or a vector's features)
  phases   [d, half, packed, inverse, size]  the mosaic of a dilated (2 half + 1)-square conv
                                         (codegen/movement.py phase_taps) or, inverse, back to (H, W)
After passes, ``act`` and ``residual`` hold what was fused into a node's epilogue:
out = act(op(x) + bias + residual); a standalone activation is an ``act`` node whose ``act``
holds it.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

import numpy as np

OPS = ("conv", "bn", "linear", "maxpool", "avgpool", "gap", "add", "relu", "relu6", "flatten", "identity",
       "act", "prelu", "affine", "binary", "reshape", "concat", "slice", "pad", "resize", "pixel_shuffle",
       "shuffle", "softmax", "phases")
INPUT = "input"


@dataclass
class Node:
    name: str                     # where it came from in the model (module path / ONNX name)
    op: str
    inputs: list[str]
    shape: tuple[int, ...]        # output shape of one image: (C, H, W) or (features,)
    attrs: dict = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    act: str = "none"
    residual: str | None = None


@dataclass
class Graph:
    input_shape: tuple[int, ...]  # one image, (C, H, W)
    nodes: list[Node]
    output: str

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def users(self, name: str) -> list[Node]:
        """Nodes reading ``name`` (as an input or as a fused residual)."""
        return [n for n in self.nodes if name in n.inputs or n.residual == name]

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self.input_shape if name == INPUT else self.node(name).shape

    def to_json(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able structure, tensors keyed ``node_index.param``) for saving: a snapshot, so
        later changes to the graph (lowering for a target fuses nodes in place) do not reach it."""
        tensors = {f"{i}.{k}": np.ascontiguousarray(v) for i, n in enumerate(self.nodes)
                   for k, v in n.params.items()}
        nodes = [{"name": n.name, "op": n.op, "inputs": list(n.inputs), "shape": list(n.shape),
                  "attrs": copy.deepcopy(n.attrs), "act": n.act, "residual": n.residual,
                  "params": sorted(n.params)} for n in self.nodes]
        return {"input_shape": list(self.input_shape), "output": self.output, "nodes": nodes}, tensors

    @staticmethod
    def from_json(obj: dict, tensors: dict[str, np.ndarray]) -> "Graph":
        nodes = [Node(name=d["name"], op=d["op"], inputs=list(d["inputs"]), shape=tuple(d["shape"]),
                      attrs=dict(d["attrs"]), act=d["act"], residual=d["residual"],
                      params={k: np.asarray(tensors[f"{i}.{k}"]) for k in d["params"]})
                 for i, d in enumerate(obj["nodes"])]
        return Graph(tuple(obj["input_shape"]), nodes, obj["output"])


def c_ident(name: str, index: int) -> str:
    """A C identifier for node ``index`` named ``name``: only [A-Za-z0-9_] ever reaches the source."""
    return f"L{index}_" + re.sub(r"[^A-Za-z0-9_]", "_", name)[:40]


def c_comment(text: str) -> str:
    """``text`` made safe inside a C block comment (model names end up in comments)."""
    return re.sub(r"[^A-Za-z0-9_.:@, ()\[\]-]", "_", text)[:80]
