"""Fallback partitioning: compile what the IR expresses, run the rest in PyTorch / ONNX Runtime.

Why: one op without a kernel (a ConvTranspose2d, a Mish) used to refuse the whole model. Here
capture reports every node it cannot express (``on_unsupported``) instead of stopping at the
first, the nodes in topological order are cut into segments, each supported segment is compiled
to native code and each other one runs in the framework the model came from: PyTorch for a
module (its torch.fx nodes, through ``split_module``), ONNX Runtime for an ONNX file (a sub-model
of its nodes). A warning and ``PartitionedModel.report()`` say which ops fell back, why, and their
share of the latency measured on the example input.

``ps.save`` writes a PartitionedModel as a directory (compiler/fallback_io.py): compiled
segments as compiled-model directories, fallback segments as ONNX (a traced PyTorch segment is
exported, and checked against PyTorch, at save time), never a pickle; ``ps.load`` runs them in
ONNX Runtime.

A compiled segment takes one (N, C, H, W), (N, C, L) or (N, features) tensor and gives one
tensor, as every compiled model does; so a supported node that would give a segment a second input or output starts a new
segment, and one that cannot be given a segment of its own (it reads two tensors from outside,
say a residual add across a fallback op) falls back too, and the report says so.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import FormatError, InputError, UnsupportedError
from .capture import capture_onnx, capture_torch, trace
from .ir import Graph

Lower = Callable[[Any, Any], Graph]  # (module or ONNX path, example) -> fused IR (api.capture)
Build = Callable[[Graph], Any]       # fused IR -> CompiledModel (api.build_from_graph)


@dataclass
class Item:
    """One node of the source graph, as the partitioner sees it."""
    label: str               # what the report calls it (layer and op)
    reads: list[str]         # values it reads (weights and constants excluded)
    writes: list[str]        # values it writes
    native: bool             # whether it goes to a compiled segment
    reason: str = ""         # why not


@dataclass
class Segment:
    native: bool
    items: list[int]         # indices into the item list, in order
    inputs: list[str]        # values read from outside, in order of first read
    outputs: list[str]       # values read after it (or the model's outputs)
    seconds: float = 0.0     # median time of one call on the example input


def _segments(items: list[Item], cuts: set[int], sinks: set[str]) -> list[Segment]:
    """Consecutive items of one kind form a segment; a cut starts a new one."""
    segs: list[Segment] = []
    for i, it in enumerate(items):
        if segs and segs[-1].native == it.native and i not in cuts:
            segs[-1].items.append(i)
        else:
            segs.append(Segment(it.native, [i], [], []))
    for s in segs:
        inside = set(s.items)
        written = {w for i in s.items for w in items[i].writes}
        later = set(sinks) | {r for j, it in enumerate(items) if j not in inside for r in it.reads}
        s.inputs = list(dict.fromkeys(r for i in s.items for r in items[i].reads if r not in written))
        s.outputs = [w for i in s.items for w in items[i].writes if w in later]
    return segs


def plan(items: list[Item], sinks: set[str], takes: Callable[[str], bool]) -> list[Segment]:
    """Segments such that each native one reads one value (which ``takes``) and gives one value
    that is its last node's; nodes are cut into new segments or demoted to the fallback (with a
    reason) until that holds. ``sinks``: the model's outputs."""
    cuts: set[int] = set()
    while True:
        segs = _segments(items, cuts, sinks)
        for s in (s for s in segs if s.native):
            fix = _fix(items, s, takes)
            if fix is not None:
                i, reason = fix
                if reason:
                    items[i].native, items[i].reason = False, reason
                else:
                    cuts.add(i)
                break
        else:
            return segs


def _fix(items: list[Item], s: Segment, takes: Callable[[str], bool]) -> tuple[int, str] | None:
    """(item, "") to cut before it, (item, reason) to demote it, or None when ``s`` is fine."""
    first = s.items[0]
    if not s.inputs or not takes(s.inputs[0]):
        return first, "its input is not one (N, C, H, W), (N, C, L) or (N, features) tensor a compiled segment can take"
    for pos, i in enumerate(s.items):
        if any(r in s.inputs[1:] for r in items[i].reads):
            return (i, "") if pos else (i, "reads two tensors computed outside a compiled segment")
    for pos, i in enumerate(s.items[:-1]):
        if any(w in s.outputs for w in items[i].writes):
            return s.items[pos + 1], ""
    if len(s.outputs) != 1:
        return s.items[-1], "gives several tensors read outside a compiled segment"
    return None


@dataclass
class Part:
    """How one segment is called and saved: the value names it takes (``call_inputs``) and gives
    (``outputs``) in call order; ``compiled``: its CompiledModel (native segments); ``to_onnx``:
    the ONNX bytes of a fallback segment, made on demand (a save)."""
    segment: Segment
    call_inputs: list[str]
    outputs: list[str]
    compiled: Any = None
    to_onnx: Callable[[], bytes] | None = None


@dataclass
class Wiring:
    """A partitioned model's values outside its segments: the input's name, the outputs' names,
    whether the model returns a tuple, and the fixed batch of an ONNX file's fallback sub-models
    (0: any batch). ``outputs`` is None when the model returns a structure other than a tensor or
    a flat tuple of tensors (it runs, but cannot be saved)."""
    graph_input: str
    outputs: list[str] | None
    as_tuple: bool
    batch: int = 0


def env_runner(wiring: Wiring, steps: list[tuple[Callable, list[str], list[str]]]) -> Callable:
    """A model's forward pass over numpy values by name: each step (fn, its input names, its
    output names) in turn; fn takes arrays and returns a list of arrays."""
    def run(x: torch.Tensor) -> Any:
        env = {wiring.graph_input: x.numpy()}
        for fn, ins, outs in steps:
            env.update(zip(outs, fn(*[env[v] for v in ins])))
        ys = [torch.from_numpy(np.ascontiguousarray(env[o])) for o in wiring.outputs]
        return tuple(ys) if wiring.as_tuple else ys[0]
    return run


def _lower_native(items: list[Item], segs: list[Segment], lower: Callable[[int], Graph]) -> dict[int, Graph] | None:
    """The IR of each native segment (by index), or None after demoting the nodes of each segment
    the compiler refused in isolation (a node whose lowering needs a node of another segment)."""
    graphs: dict[int, Graph] = {}
    for k, s in enumerate(segs):
        if s.native:
            try:
                graphs[k] = lower(k)
            except UnsupportedError as e:
                for i in s.items:
                    items[i].native, items[i].reason = False, f"its compiled segment was refused: {e}"
    return graphs if len(graphs) == sum(s.native for s in segs) else None


class PartitionedModel:
    """Compiled segments and fallback segments run in turn: ``y = m(x)`` like a CompiledModel
    (tensor in -> tensor out, array in -> array out; a module returning a tuple gives a tuple).
    ``save(path)`` (or ``ps.save``) writes it as a directory that ``ps.load`` opens, its fallback
    segments as ONNX run by ONNX Runtime (compiler/fallback_io.py)."""

    is_compiled_patsparse = True

    def __init__(self, run: Callable[[Any], Any], items: list[Item], segments: list[Segment],
                 input_shape: tuple[int, ...], engine: str, timed: Callable[[], None], parts: list[Part],
                 wiring: Wiring):
        self._run, self.items, self.segments = run, items, segments
        self.input_shape, self.engine = tuple(input_shape), engine
        self.parts, self.wiring = parts, wiring
        timed()

    @property
    def fallback_ops(self) -> list[tuple[str, str]]:
        """(op, reason) of every node that runs in the fallback engine."""
        return [(it.label, it.reason) for it in self.items if not it.native]

    def report(self) -> str:
        """Which ops fell back, why, and each segment's share of the latency."""
        total = sum(s.seconds for s in self.segments) or 1.0
        n_fb = len(self.fallback_ops)
        lines = [f"{n_fb} of {len(self.items)} ops run in {self.engine} (fallback); "
                 f"{len(self.segments)} segments, share of one call on the example input:"]
        for s in self.segments:
            kind = "native" if s.native else self.engine
            lines.append(f"  {kind:12s} {100 * s.seconds / total:5.1f}%  "
                         + ", ".join(self.items[i].label for i in s.items))
            lines += [f"      {self.items[i].label}: {self.items[i].reason}" for i in s.items if not s.native]
        return "\n".join(lines)

    def __call__(self, x: Any) -> Any:
        if not isinstance(x, (torch.Tensor, np.ndarray)):
            raise InputError(f"input must be a torch.Tensor or numpy array, got {type(x).__name__}")
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise InputError(f"input of shape {tuple(x.shape)}; this model was compiled for "
                             f"(N, {', '.join(map(str, self.input_shape))})")
        if isinstance(x, np.ndarray):
            y = self._run(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
            return tuple(t.numpy() for t in y) if isinstance(y, (tuple, list)) else y.numpy()
        y = self._run(x.detach().to("cpu", torch.float32))
        return tuple(t.to(x.device) for t in y) if isinstance(y, (tuple, list)) else y.to(x.device)

    forward = __call__

    def eval(self) -> "PartitionedModel":
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model as a directory (compiler/fallback_io.py); UnsupportedError naming the
        ops of a fallback segment that cannot be stored as ONNX."""
        from .fallback_io import save_partitioned

        return save_partitioned(self, path)

    def __repr__(self) -> str:
        return (f"PartitionedModel(input={self.input_shape}, {len(self.segments)} segments, "
                f"{len(self.fallback_ops)} ops in {self.engine})")


class _Timed:
    """A segment's callable that adds its wall time to ``segment.seconds`` while ``on``."""

    def __init__(self, fn: Callable, segment: Segment):
        self.fn, self.segment, self.on, self.times = fn, segment, False, []

    def __call__(self, *args):
        if not self.on:
            return self.fn(*args)
        t = time.perf_counter()
        out = self.fn(*args)
        self.times.append(time.perf_counter() - t)
        return out


def _measure(run: Callable[[Any], Any], x: Any, timers: list[_Timed], repeats: int = 5) -> None:
    """Each segment's median time over ``repeats`` calls on ``x`` (after one untimed call)."""
    run(x)
    for t in timers:
        t.on = True
    for _ in range(repeats):
        run(x)
    for t in timers:
        t.on = False
        t.segment.seconds = float(np.median(t.times))


def _warn(items: list[Item], engine: str) -> None:
    fb = [f"{it.label} ({it.reason})" for it in items if not it.native]
    warnings.warn(f"patsparse.compile: {len(fb)} op(s) run in {engine}, not in generated code: "
                  + "; ".join(fb) + " (strict=True refuses instead)", stacklevel=5)


# ------------------------------------------------------------------------------------------
# PyTorch

class _Module(torch.nn.Module):
    """A segment callable inside the split GraphModule."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def compile_torch(model: torch.nn.Module, example: torch.Tensor, lower: Lower, build: Build) -> PartitionedModel:
    """``model`` with its unsupported fx nodes (and those that cannot join a compiled segment)
    run by PyTorch between compiled segments."""
    from torch.fx.passes.shape_prop import ShapeProp
    from torch.fx.passes.split_module import split_module

    gm = trace(model)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as e:  # the model's own code failing on the example input
        raise InputError(f"{type(model).__name__} fails on the example input of shape "
                         f"{tuple(example.shape)}: {e}") from e
    reasons: dict[str, str] = {}
    capture_torch(gm, example, on_unsupported=lambda n, e: reasons.setdefault(n.name, str(e)))
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    items = [Item(f"{n.target if n.op == 'call_module' else n.name} "
                  f"({type(gm.get_submodule(n.target)).__name__ if n.op == 'call_module' else _fn_name(n.target)})",
                  [a.name for a in n.all_input_nodes], [n.name], n.name not in reasons, reasons.get(n.name, ""))
             for n in nodes]
    sinks = {a.name for n in gm.graph.nodes if n.op == "output" for a in n.all_input_nodes}

    def takes(v: str) -> bool:
        meta = next(n for n in gm.graph.nodes if n.name == v).meta.get("tensor_meta")
        return hasattr(meta, "shape") and len(meta.shape) in (2, 3, 4) and meta.dtype == torch.float32

    while True:
        segs = plan(items, sinks, takes)
        part = {n.name: k for k, s in enumerate(segs) for n in (nodes[i] for i in s.items)}
        split = split_module(gm, gm, lambda n: part[n.name])
        subs = [getattr(split, f"submod_{k}") for k in range(len(segs))]
        ins: dict[int, tuple] = {}
        hooks = [m.register_forward_pre_hook(lambda _, a, k=k: ins.setdefault(k, a)) for k, m in enumerate(subs)]
        with torch.no_grad():
            split(example[:1])
        for h in hooks:
            h.remove()
        graphs = _lower_native(items, segs, lambda k: lower(subs[k], ins[k][0]))
        if graphs is not None:
            break
    timers, parts = [], []
    for k, s in enumerate(segs):
        labels = ", ".join(items[i].label for i in s.items)
        call_inputs = [n.name for n in subs[k].graph.nodes if n.op == "placeholder"]
        outputs = _names(next(n for n in subs[k].graph.nodes if n.op == "output").args[0])
        if s.native:
            cm = build(graphs[k])
            fn: Callable = _native_torch(cm)
            parts.append(Part(s, call_inputs, outputs, compiled=cm))
        else:
            fn = subs[k]
            parts.append(Part(s, call_inputs, outputs, to_onnx=functools.partial(
                torch_segment_onnx, subs[k], ins[k], call_inputs, outputs, labels)))
        timers.append(_Timed(fn, s))
        setattr(split, f"submod_{k}", _Module(timers[-1]))
    _warn(items, "PyTorch")
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return split(x)

    wiring = Wiring(next(n.name for n in gm.graph.nodes if n.op == "placeholder"), _names(out),
                    isinstance(out, (tuple, list)))
    return PartitionedModel(run, items, segs, tuple(example.shape[1:]), "PyTorch",
                            lambda: _measure(run, example[:1], timers), parts, wiring)


def _names(out: Any) -> list[str] | None:
    """The value names of an fx output argument (a node or a flat tuple of nodes), else None."""
    if isinstance(out, torch.fx.Node):
        return [out.name]
    if isinstance(out, (tuple, list)) and all(isinstance(a, torch.fx.Node) for a in out):
        return [a.name for a in out]
    return None


def torch_segment_onnx(module: torch.nn.Module, example: tuple, call_inputs: list[str], outputs: list[str] | None,
                       labels: str) -> bytes:
    """A traced PyTorch segment as ONNX (opset 17, any batch), checked against PyTorch on its
    example inputs (the one image the model was compiled with, and it twice as a batch of 2)
    through ONNX Runtime; UnsupportedError naming the segment's ops when it cannot be."""
    import io

    import onnxruntime as ort

    what = f"the fallback ops {labels}"
    with torch.no_grad():
        y = module(*example)
    values = [*example, *(y if isinstance(y, (tuple, list)) else [y])]
    if outputs is None or not all(isinstance(a, torch.Tensor) and a.dtype == torch.float32 for a in values):
        raise UnsupportedError(f"cannot save {what}: they take or give values other than float32 tensors "
                               "(sizes, integers, nested structures), which ONNX Runtime cannot be handed")
    buf = io.BytesIO()
    try:
        torch.onnx.export(module, tuple(example), buf, dynamo=False, opset_version=17, input_names=call_inputs,
                          output_names=outputs, dynamic_axes={v: {0: "batch"} for v in [*call_inputs, *outputs]})
        sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    except Exception as e:  # the exporter and ONNX Runtime raise many types for an op they lack
        raise UnsupportedError(f"cannot save {what}: they do not export to ONNX that ONNX Runtime runs "
                               f"({type(e).__name__}: {str(e)[:300]})") from None
    for batch in (1, 2):
        xs = [torch.cat([a] * batch) for a in example]
        with torch.no_grad():
            want = module(*xs)
        want = list(want) if isinstance(want, (tuple, list)) else [want]
        got = sess.run(outputs, {v: a.numpy() for v, a in zip(call_inputs, xs)})
        for name, g, w in zip(outputs, got, want):
            w = w.numpy()
            if g.shape != w.shape or not np.allclose(g, w, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(w).max()))):
                raise UnsupportedError(f"cannot save {what}: their ONNX export does not compute what PyTorch "
                                       f"does on a batch of {batch} (value {name})")
    return buf.getvalue()


def _native_torch(cm) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: cm(x.contiguous())


def _fn_name(t) -> str:
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


# ------------------------------------------------------------------------------------------
# ONNX

def compile_onnx(path: str | os.PathLike, lower: Lower, build: Build) -> PartitionedModel:
    """The ONNX file at ``path`` with its unsupported nodes run by ONNX Runtime (one session per
    fallback segment, a sub-model of the file's nodes) between compiled segments."""
    import onnx
    import onnxruntime as ort
    from onnx import shape_inference

    path = Path(path)
    reasons: dict[tuple, str] = {}  # by outputs: capture reads its own copy of the file
    try:
        capture_onnx(path, on_unsupported=lambda n, e: reasons.setdefault(tuple(n.output), str(e)))
    except FormatError as e:  # e.g. no shapes past the refused node: the fallback cannot place it
        if not reasons:
            raise
        raise UnsupportedError(f"{next(iter(reasons.values()))}; the nodes after it cannot be read "
                               f"either: {e}") from e
    model = shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    weights = {t.name for t in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    nodes = [n for n in g.node if n.op_type != "Constant"]
    items = [Item(f"{n.name or n.output[0]} ({n.op_type})", [i for i in n.input if i and i not in weights
                                                           and i not in consts],
                  list(n.output), tuple(n.output) not in reasons, reasons.get(tuple(n.output), "")) for n in nodes]
    infos = {vi.name: vi for vi in [*g.value_info, *g.input, *g.output]}

    def dims(v: str) -> list:
        vi = infos.get(v)
        return [] if vi is None else [d.dim_value for d in vi.type.tensor_type.shape.dim]

    if len(g.output) != 1:
        raise UnsupportedError(f"{path}: {len(g.output)} graph outputs; exactly one is supported")
    graph_input = next(i.name for i in g.input if i.name not in weights)
    batch = dims(graph_input)[0] if dims(graph_input) else 0
    sinks = {o.name for o in g.output}

    def takes(v: str) -> bool:
        return len(dims(v)) in (2, 3, 4) and all(dims(v)[1:]) and \
            infos[v].type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    def sub_model(s: Segment) -> onnx.ModelProto:
        body = [nodes[i] for i in s.items]
        read = {i for n in body for i in n.input}
        sub = onnx.helper.make_graph(
            [consts[c] for c in consts if c in read] + body, "segment",
            [infos[v] for v in s.inputs],
            [infos.get(v) or onnx.helper.make_empty_tensor_value_info(v) for v in s.outputs],
            [t for t in g.initializer if t.name in read],
            value_info=[infos[w] for n in body for w in n.output if w in infos and w not in s.outputs])
        return onnx.helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)

    with tempfile.TemporaryDirectory() as tmp:
        while True:
            segs = plan(items, sinks, takes)

            def lower_file(k: int) -> Graph:
                f = Path(tmp) / f"segment{k}.onnx"
                onnx.save(sub_model(segs[k]), str(f))
                return lower(str(f), None)

            graphs = _lower_native(items, segs, lower_file)
            if graphs is not None:
                break
    timers, parts = [], []
    for k, s in enumerate(segs):
        if s.native:
            cm = build(graphs[k])
            fn = _native_onnx(cm)
            parts.append(Part(s, s.inputs, s.outputs, compiled=cm))
        else:
            try:
                sess = ort.InferenceSession(sub_model(s).SerializeToString(), providers=["CPUExecutionProvider"])
            except Exception as e:  # ORT raises its own exception types for a malformed node
                raise UnsupportedError(f"{path}: ONNX Runtime cannot run the nodes "
                                       f"{', '.join(items[i].label for i in s.items)}, which the compiler cannot "
                                       f"generate either: {e}") from None
            fn = _session(sess, s.outputs, batch)
            parts.append(Part(s, s.inputs, s.outputs, to_onnx=functools.partial(
                lambda s: sub_model(s).SerializeToString(), s)))
        timers.append(_Timed(fn, s))
    _warn(items, "ONNX Runtime")
    wiring = Wiring(graph_input, [g.output[0].name], False, batch)
    run = env_runner(wiring, [(t, t.segment.inputs, t.segment.outputs) for t in timers])
    return PartitionedModel(run, items, segs, tuple(dims(graph_input)[1:]), "ONNX Runtime",
                            lambda: _measure(run, torch.zeros(1, *dims(graph_input)[1:]), timers), parts, wiring)


def _native_onnx(cm) -> Callable:
    return lambda x: [cm(x)]


def _session(sess, outputs: list[str], batch: int) -> Callable:
    """Run a fallback sub-model (its inputs in the order of its graph's); a file exported for a
    fixed batch B runs B images at a time (the last chunk filled up with zeros, their results
    dropped)."""
    names = [i.name for i in sess.get_inputs()]

    def call(*xs):
        n = len(xs[0]) if xs else 0
        if not batch or n == batch:
            return sess.run(outputs, dict(zip(names, xs)))
        parts = []
        for j in range(0, n, batch):
            feed = {}
            for k, v in zip(names, xs):
                if v.ndim and len(v) == n:  # a batched value (a shape computed in the graph is not)
                    v = v[j:j + batch]
                    v = np.concatenate([v, np.zeros((batch - len(v), *v.shape[1:]), v.dtype)]) if len(v) < batch else v
                feed[k] = v
            parts.append([o[:min(batch, n - j)] for o in sess.run(outputs, feed)])
        return [np.concatenate(p) for p in zip(*parts)]

    return call
