"""A compiled model using the newer IR ops (ceil-mode / dilated / pad-excluding pools,
broadcasting binary ops, concat and slice, standalone act / affine / prelu, reshapes, and
parameterised activations) saves, loads back through the graph checks (compiler/validate.py)
and still matches PyTorch; edits of those ops' fields are a FormatError naming the node."""

import json
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hostile_cases import edit_graph
from test_compiler import assert_close
from test_ops_binary import Broadcasts, LinearGate
from test_ops_channels import SplitJoin
from test_ops_pool import Pools
from test_ops_targets import _model as all_ops

import patsparse as ps
from patsparse.compiler.api import capture
from patsparse.compiler.validate import graph_from_file
from patsparse.errors import FormatError


class Activations(nn.Module):
    """Parameterised activations fused into convs and a linear, and one standalone."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.leaky_relu(self.c1(F.elu(x, 0.7)), 0.1)
        x = F.hardtanh(self.c2(x), -1.5, 2.0)
        x = F.hardsigmoid(self.c3(x))
        return F.softplus(self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)), 2.0, 10.0)


# name -> (model, input shape, ops and activations its saved graph must hold)
CASES = {
    "pools": (Pools, (3, 17, 23), {"maxpool", "avgpool"}),
    "binary": (Broadcasts, (3, 7, 9), {"binary", "sigmoid", "tanh"}),
    "concat_slice": (lambda: SplitJoin(chunk=False), (3, 9, 13), {"concat", "slice"}),
    "reshape_gate": (LinearGate, (3, 10, 13), {"binary", "linear", "sigmoid"}),
    "standalone": (all_ops, (3, 19, 23), {"affine", "prelu", "act", "concat", "slice", "binary", "hardswish"}),
    "activations": (Activations, (3, 9, 11), {"act", "elu:0.699999988079071", "leaky_relu:0.10000000149011612",
                                              "clip:-1.5,2.0", "hardsigmoid:0.1666666716337204,0.5",
                                              "softplus:2.0,10.0"}),
}


def _graph(d) -> dict:
    return json.loads((d / "graph.json").read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_new_ops_round_trip_through_save_and_load(name, tmp_path):
    make, shape, must_hold = CASES[name]
    torch.manual_seed(0)
    m = make().eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        want = m(x)
    ps.save(ps.compile(m, x[:1], threads=2), tmp_path / "c")
    nodes = _graph(tmp_path / "c")["nodes"]
    assert must_hold <= {n["op"] for n in nodes} | {n["act"] for n in nodes}
    assert_close(ps.load(tmp_path / "c")(x), want)


@pytest.mark.parametrize("name", ["pools", "binary"])
def test_graphs_captured_from_onnx_validate(name, tmp_path):
    """The ONNX importer's graphs of the same models pass the checks too (unchanged)."""
    make, shape, _ = CASES[name]
    torch.manual_seed(0)
    m = make().eval()
    torch.onnx.export(m, torch.randn(1, *shape), str(tmp_path / "m.onnx"), dynamo=False, opset_version=17)
    g = capture(str(tmp_path / "m.onnx"))
    back = graph_from_file(*g.to_json(), "m")
    assert [(n.name, n.op, n.inputs, n.shape, n.attrs, n.act) for n in back.nodes] == \
        [(n.name, n.op, n.inputs, n.shape, n.attrs, n.act) for n in g.nodes]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """AllOps (every new op kind) compiled and saved once; each tamper case edits a copy."""
    d = tmp_path_factory.mktemp("validate_ops") / "c"
    ps.save(ps.compile(all_ops(), torch.randn(1, 3, 19, 23), threads=2), d)
    return d


def _first(g: dict, pred) -> dict:
    return next(n for n in g["nodes"] if pred(n))


def _set(op: str, key: str, value):
    return lambda g: _first(g, lambda n: n["op"] == op).__setitem__(key, value)


def _set_attr(op: str, key: str, value):
    return lambda g: _first(g, lambda n: n["op"] == op)["attrs"].__setitem__(key, value)


def _drop_input(op: str):
    return lambda g: _first(g, lambda n: n["op"] == op)["inputs"].pop()


def _act(value):
    return lambda g: _first(g, lambda n: n["act"] != "none").__setitem__("act", value)


TAMPERS = {
    "unknown activation": (_act("swish:1.0"), "swish"),
    "activation parameter count": (_act("leaky_relu:0.1,0.2"), "leaky_relu"),
    "activation not written as the compiler writes it": (_act("leaky_relu:0.1"), "not written as the compiler"),
    "activation not a string": (_act(["relu"]), "not a string"),
    "activation on a concat": (_set("concat", "act", "relu"), "applies no activation"),
    "ceil_mode a number": (_set_attr("maxpool", "ceil_mode", 1), "ceil_mode"),
    "ceil_mode a string": (_set_attr("avgpool", "ceil_mode", "true"), "ceil_mode"),
    "count_include_pad on a max pool": (_set_attr("maxpool", "count_include_pad", False), "attributes"),
    "dilation out of range": (_set_attr("maxpool", "dilation", 0), "dilation"),
    "pool padding over half the window": (_set_attr("maxpool", "padding", 2), "padding"),
    "binary with one input": (_drop_input("binary"), "must name 2"),
    "binary op unknown": (_set_attr("binary", "op", "pow"), "binary op"),
    "binary op unhashable": (_set_attr("binary", "op", ["mul"]), "binary op"),
    "concat channels do not add up": (_drop_input("concat"), "differs"),
    "slice past the channels": (_set_attr("slice", "channels", 100), "channels"),
    "slice start negative": (_set_attr("slice", "start", -1), "start"),
    "residual on a binary": (_set("binary", "residual", "bn0"), "residual"),
    "input not a name": (_set("concat", "inputs", [["bn0"]]), "inputs"),
    "prelu without its slopes": (_set("prelu", "params", []), "params"),
    "affine attribute injected": (_set("affine", "attrs", {"eps": 1e-5, "k": 3}), "attributes"),
    "act attribute injected": (_set("act", "attrs", {"act": "relu"}), "attributes"),
}


@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_tampered_new_op_fields_are_format_errors(saved, case, tmp_path):
    change, match = TAMPERS[case]
    d = shutil.copytree(saved, tmp_path / "c")
    edit_graph(d, change)
    with pytest.raises(FormatError, match=match) as e:
        ps.load(d)
    assert "graph.json" in str(e.value) and "node" in str(e.value)
