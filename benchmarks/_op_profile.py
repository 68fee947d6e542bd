"""Where the time of one inference goes, by op category, in our compiled model and in ONNX
Runtime on the same model: so that where we are slower, the op that costs it is named.

Ours: ``CompiledModel.profile`` (per layer), each layer put in a category by its IR node (a
conv by kernel size and groups); a fused 1x1 + depthwise kernel (pw_dw) is split between the two
by their dense multiply-adds. ONNX Runtime: its own profiler (``enable_profiling``), each
executed node by op type and, for a Conv, by its weight's shape, after ONNX Runtime's fusions
(a conv carries its BatchNorm in both engines, and its activation in ours; ONNX Runtime runs
some standalone, e.g. SiLU as QuickGelu, which then counts as elementwise). Layout reorders (ONNX Runtime's
NCHWc) and data movement are categories of their own. Both are medians over ``repeats`` calls
of one image on ``threads`` threads, taken one engine after the other in this process.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from patsparse.compiler.api import capture

CATEGORIES = ("conv kxk", "conv 1x1", "depthwise", "linear", "pooling", "elementwise", "data movement", "other")
MOVEMENT = {"concat", "slice", "shuffle", "pad", "resize", "phases", "pixel_shuffle", "flatten", "reshape",
            "Concat", "Slice", "Split", "Transpose", "Reshape", "Resize", "Pad", "Flatten", "ReorderInput",
            "ReorderOutput", "DepthToSpace", "Gather", "Shape", "Unsqueeze", "Squeeze"}
POOLS = {"maxpool", "avgpool", "gap", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean"}
LINEAR = {"linear", "Gemm", "MatMul"}
ELEMENTWISE = {"binary", "act", "channelwise", "affine", "softmax", "Mul", "Add", "Sub", "Div", "HardSigmoid",
               "Sigmoid", "Relu", "HardSwish", "Clip", "Softmax", "BatchNormalization", "QuickGelu", "Gelu",
               "Tanh", "LeakyRelu", "Elu", "Softplus"}


def _conv_category(k: int, depthwise: bool) -> str:
    return "depthwise" if depthwise else ("conv 1x1" if k == 1 else "conv kxk")


def _category(op: str) -> str:
    for names, cat in ((MOVEMENT, "data movement"), (POOLS, "pooling"), (LINEAR, "linear"),
                       (ELEMENTWISE, "elementwise")):
        if op in names:
            return cat
    return "other"


def ours(cm, model: torch.nn.Module, example: torch.Tensor, repeats: int) -> dict[str, float]:
    """ms per category of one call of the CompiledModel ``cm`` of ``model``."""
    g = capture(model, example)
    return by_category(cm.profile(example.numpy(), repeats=repeats), {n.name: n for n in g.nodes})


def by_category(rows: list[dict], nodes: dict) -> dict[str, float]:
    """ms per category of profile ``rows`` (``CompiledModel.profile``'s), each layer's node from
    ``nodes`` (name -> IR node of the captured, unfused graph)."""
    out: dict[str, float] = defaultdict(float)
    for row in rows:
        n = nodes.get(row["name"])
        if row["kernel"] == "pw_dw" and n is not None and n.inputs[0] in nodes:
            e = nodes[n.inputs[0]]  # the 1x1 conv fused into it
            pw = float(np.prod(e.shape)) * float(e.params["weight"].shape[1])
            dw = float(np.prod(n.shape)) * n.attrs["k"] ** 2
            out["conv 1x1"] += row["ms"] * pw / (pw + dw)
            out["depthwise"] += row["ms"] * dw / (pw + dw)
            continue
        if n is not None and n.op == "conv":
            cat = _conv_category(n.attrs["k"], n.attrs["groups"] > 1)
        else:
            cat = _category(n.op if n is not None else row["kernel"])
        out[cat] += row["ms"]
    return dict(out)


def onnxruntime(model: torch.nn.Module, example: torch.Tensor, threads: int, repeats: int) -> dict[str, float]:
    """ms per category of one ONNX Runtime call of ``model`` exported to ONNX (opset 17)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        torch.onnx.export(model, example, str(path), dynamo=False, opset_version=17)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.enable_profiling = threads, True
        so.profile_file_prefix = str(Path(tmp) / "profile")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: example.numpy()}
        for _ in range(repeats + 3):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_node: dict[str, list[float]] = defaultdict(list)
    cat_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        per_node[e["name"]].append(e["dur"] / 1e3)
        op = e["args"].get("op_name", "")
        if op in ("Conv", "FusedConv"):
            w = e["args"]["input_type_shape"][1]["float"]
            c_in = e["args"]["input_type_shape"][0]["float"][1]
            cat_of[e["name"]] = _conv_category(w[2] if len(w) > 2 else 1, w[1] == 1 and c_in > 1)
        else:
            cat_of[e["name"]] = _category(op)
    out: dict[str, float] = defaultdict(float)
    for name, durs in per_node.items():
        out[cat_of[name]] += float(np.median(durs[3:] if len(durs) > 3 else durs))
    return dict(out)


def costliest(ours_ms: dict[str, float], theirs_ms: dict[str, float], top: int = 2) -> str:
    """The categories where we spend the most more than ONNX Runtime, as "cat ours/theirs ms"."""
    gaps = sorted(((ours_ms.get(c, 0.0) - theirs_ms.get(c, 0.0), c) for c in CATEGORIES), reverse=True)
    return ", ".join(f"{c} {ours_ms.get(c, 0.0):.2f}/{theirs_ms.get(c, 0.0):.2f}" for g, c in gaps[:top] if g > 0) \
        or "none"
