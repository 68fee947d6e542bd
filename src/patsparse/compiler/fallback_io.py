"""A PartitionedModel (compiler/fallback.py) on disk, without pickle::

    model.partitioned/
      partition.json          # {"format": "patsparse-partitioned", "version": 1, the input shape,
                              #  the wiring (input, output and segment value names), the ops and
                              #  why each fell back, "files": SHA-256 of every ONNX file}
      segments/native<k>/     # a compiled segment: a compiled-model directory (package.py)
      segments/fallback<k>.onnx  # a fallback segment: an ONNX sub-model

Why ONNX for the fallback: a traced PyTorch segment is Python code, which no safe format holds;
its ONNX export is data that ONNX Runtime runs. The export is checked against PyTorch when the
model is saved (fallback.torch_segment_onnx), and an op that does not export is an
UnsupportedError naming it, so nothing is saved that would load and compute something else.
A fallback segment of an ONNX file is already a sub-model of that file. On load every file is
checked against its hash, the wiring against itself (each segment reads only values computed
before it), each compiled segment as ``load_compiled`` checks it (rebuilt from its graph), and
each ONNX file must have the inputs and outputs the wiring names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write_bytes, read_json, replace_dir, saved_dir, sha256, write_json
from ..errors import FormatError, UnsupportedError
from .fallback import Item, PartitionedModel, Part, Segment, Wiring, _measure, _native_onnx, _session, _Timed, env_runner

FORMAT = "patsparse-partitioned"
VERSION = 1
PARTITION = "partition.json"
SEGMENTS = "segments"


def _native_dir(k: int) -> str:
    return f"{SEGMENTS}/native{k}"


def _onnx_file(k: int) -> str:
    return f"{SEGMENTS}/fallback{k}.onnx"


def save_partitioned(pm: PartitionedModel, path: str | os.PathLike) -> Path:
    """Write ``pm`` at ``path`` (module docstring) in one atomic directory swap."""
    if pm.wiring.outputs is None:
        raise UnsupportedError(f"cannot save to {path}: the model returns a structure other than a tensor or a flat "
                               "tuple of tensors")
    onnx_bytes = {k: p.to_onnx() for k, p in enumerate(pm.parts) if not p.segment.native}  # may refuse: before writing

    def write(d: Path) -> None:
        (d / SEGMENTS).mkdir()
        files = {}
        for k, p in enumerate(pm.parts):
            if p.segment.native:
                p.compiled.save(d / _native_dir(k))
            else:
                atomic_write_bytes(d / _onnx_file(k), onnx_bytes[k])
                files[_onnx_file(k)] = sha256(onnx_bytes[k])
        write_json(d / PARTITION, {
            "format": FORMAT, "version": VERSION, "input_shape": list(pm.input_shape),
            "input": pm.wiring.graph_input, "outputs": pm.wiring.outputs, "tuple": pm.wiring.as_tuple,
            "batch": pm.wiring.batch, "source_engine": pm.engine,
            "items": [{"label": it.label, "native": it.native, "reason": it.reason} for it in pm.items],
            "segments": [{"native": p.segment.native, "items": p.segment.items, "inputs": p.call_inputs,
                          "outputs": p.outputs} for p in pm.parts],
            "files": files})

    return replace_dir(path, write, (PARTITION, SEGMENTS))


def _check(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise FormatError(f"{where}: {what}")


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) and s for s in v)


def _checked(meta: Any, where: str) -> dict:
    """The partition description, every field checked (FormatError naming the first bad one)."""
    _check(isinstance(meta, dict) and meta.get("format") == FORMAT, where, "not a patsparse partitioned model")
    _check(meta.get("version") == VERSION, where, f"format version {meta.get('version')!r}, this patsparse reads "
                                                  f"{VERSION}")
    shape = meta.get("input_shape")
    _check(isinstance(shape, list) and 1 <= len(shape) <= 3
           and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape), where,
           f"input_shape {shape!r} is not 1 to 3 positive integers")
    _check(isinstance(meta.get("input"), str) and _strings(meta.get("outputs")) and meta["outputs"], where,
           "input / outputs are not value names")
    _check(isinstance(meta.get("tuple"), bool) and isinstance(meta.get("batch"), int)
           and not isinstance(meta["batch"], bool) and meta["batch"] >= 0, where, "tuple / batch malformed")
    items = meta.get("items")
    _check(isinstance(items, list) and all(isinstance(it, dict) and isinstance(it.get("label"), str)
                                           and isinstance(it.get("native"), bool) and isinstance(it.get("reason"), str)
                                           for it in items), where, "items malformed")
    segs = meta.get("segments")
    _check(isinstance(segs, list) and segs and isinstance(meta.get("files"), dict), where, "segments / files missing")
    known = {meta["input"]}
    for k, s in enumerate(segs):
        at = f"segment {k}"
        _check(isinstance(s, dict) and isinstance(s.get("native"), bool) and _strings(s.get("inputs"))
               and _strings(s.get("outputs")) and isinstance(s.get("items"), list)
               and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(items) for i in s["items"]),
               where, f"{at} malformed")
        _check(set(s["inputs"]) <= known, where, f"{at} reads {sorted(set(s['inputs']) - known)}, computed nowhere "
                                                 "before it")
        _check(not s["native"] or (len(s["inputs"]) == 1 and len(s["outputs"]) == 1), where,
               f"{at}: a compiled segment takes one tensor and gives one")
        known |= set(s["outputs"])
    _check(set(meta["outputs"]) <= known, where, "an output is computed by no segment")
    return meta


def load_partitioned(path: str | os.PathLike, *, threads: int | None = None) -> PartitionedModel:
    """Open what ``save_partitioned`` wrote; its fallback segments run in ONNX Runtime."""
    import onnxruntime as ort

    from .package import load_compiled

    d = saved_dir(path)
    where = str(d / PARTITION)
    meta = _checked(read_json(d / PARTITION, "partitioned-model description"), where)
    items = [Item(it["label"], [], [], it["native"], it["reason"]) for it in meta["items"]]
    segs, steps, parts = [], [], []
    for k, s in enumerate(meta["segments"]):
        seg = Segment(s["native"], s["items"], s["inputs"], s["outputs"])
        if s["native"]:
            cm = load_compiled(d / _native_dir(k), threads=threads)
            fn = _native_onnx(cm)
            parts.append(Part(seg, s["inputs"], s["outputs"], compiled=cm))
        else:
            name = _onnx_file(k)
            try:
                data = (d / name).read_bytes()
            except OSError as e:
                raise FormatError(f"{d}: partitioned model is incomplete ({e})") from None
            _check(meta["files"].get(name) == sha256(data), str(d / name), "does not match the hash in "
                   f"{PARTITION} (corrupt, edited, or no hash given)")
            try:
                sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
            except Exception as e:  # ONNX Runtime's own exception types
                raise FormatError(f"{d / name}: ONNX Runtime cannot open it: {str(e)[:300]}") from None
            _check([i.name for i in sess.get_inputs()] == s["inputs"]
                   and set(s["outputs"]) <= {o.name for o in sess.get_outputs()}, str(d / name),
                   f"its inputs / outputs are not the {s['inputs']} / {s['outputs']} of {PARTITION}")
            fn = _session(sess, s["outputs"], meta["batch"])
            parts.append(Part(seg, s["inputs"], s["outputs"], to_onnx=lambda data=data: data))
        segs.append(seg)
        steps.append(_Timed(fn, seg))
    wiring = Wiring(meta["input"], meta["outputs"], meta["tuple"], meta["batch"])
    run = env_runner(wiring, [(t, t.segment.inputs, t.segment.outputs) for t in steps])
    shape = tuple(meta["input_shape"])
    return PartitionedModel(run, items, segs, shape, "ONNX Runtime",
                            lambda: _measure(run, torch.zeros(1, *shape), steps), parts, wiring)


def is_partitioned_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds what ``save_partitioned`` writes."""
    return (saved_dir(path) / PARTITION).is_file()

