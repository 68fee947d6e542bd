"""``ps.quantize``: a float model -> ``QuantizedModel``, whose PyTorch forward computes exactly what
the int8 kernels compute (arith.py), so its accuracy is the compiled model's accuracy.

The model is captured into the compiler's fused IR first (BatchNorm folded, activations and
residual adds fused), calibrated on that IR (one observer per tensor), and quantised node by
node. Nodes with an int8 kernel (``INT8_OPS``, with a fused activation in ``INT8_ACTS``) run on
uint8 codes; any other node falls back to float32 on its own: its inputs are dequantised, it
runs in float32 and its output is quantised again with its calibrated parameters. The names of
those layers are in ``QuantizedModel.fallback``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn
from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver, PerChannelMinMaxObserver

from .. import __version__
from ..checkpoint import load_tensors, read_json, replace_dir, save_tensors, write_json
from ..compiler.ir import INPUT, Graph, Node
from ..errors import FormatError, InputError
from . import arith
from .fp32 import run_node

FORMAT = "patsparse-quantized"
FORMAT_VERSION = 1
META, TENSORS = "quantized.json", "quantized.safetensors"
INT8_OPS = ("conv", "linear", "gap", "maxpool")
INT8_ACTS = ("none", "relu", "relu6")
INT8_PARAMS = ("w_q", "bias_q", "m")
OBSERVERS = {"histogram": HistogramObserver, "minmax": MinMaxObserver}


def has_int8_kernel(n: Node) -> bool:
    """Whether ``n`` runs on int8 codes (else it falls back to float32)."""
    if n.op not in INT8_OPS or n.act not in INT8_ACTS:
        return False
    if n.op == "conv":
        return n.attrs["groups"] == 1
    return n.residual is None


class QuantizedModel(nn.Module):
    """An int8 model simulated in PyTorch: ``y = q(x)`` takes and returns float tensors (N, C, H, W).

    ``graph``: the fused IR; each int8 node carries ``w_q`` (int8), ``bias_q`` (int32) and ``m``
    (float32 requantisation multipliers) in its params and ``lo``/``hi`` (code range after its
    activation) and, with a residual, ``res_m`` in ``attrs["q"]``. ``qparams``: per tensor
    name ("input" and every node) its ``scale`` and ``zero_point``. ``fallback``: nodes that
    run in float32.
    """

    is_quantized_patsparse = True

    def __init__(self, graph: Graph, qparams: dict[str, dict], normalization: dict | None = None):
        super().__init__()
        self.graph = graph
        self.qparams = qparams
        self.fallback = [n.name for n in graph.nodes if not has_int8_kernel(n)]
        if normalization is not None:
            self.patsparse_normalization = normalization

    def _qp(self, name: str) -> tuple[float, int]:
        p = self.qparams[name]
        return p["scale"], p["zero_point"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != tuple(self.graph.input_shape):
            raise InputError(f"QuantizedModel takes a tensor (N, {', '.join(map(str, self.graph.input_shape))}), "
                             f"got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        codes = {INPUT: arith.quantize(x, *self._qp(INPUT))}
        for n in self.graph.nodes:
            codes[n.name] = self.run_int8(n, codes) if has_int8_kernel(n) else self._run_fallback(n, codes)
        return arith.dequantize(codes[self.graph.output], *self._qp(self.graph.output))

    def run_int8(self, n: Node, codes: dict[str, torch.Tensor]) -> torch.Tensor:
        """One int8 node's output codes (int32 tensor, batch first) from the codes of its inputs."""
        x = codes[n.inputs[0]]
        s_in, zp_in = self._qp(n.inputs[0])
        s_out, zp_out = self._qp(n.name)
        q, p = n.attrs["q"], n.params
        if n.op == "maxpool":  # same parameters in and out: the max of codes is the code of the max
            a = n.attrs
            y = torch.nn.functional.max_pool2d(x.to(torch.float64), a["k"], a["stride"], a["padding"],
                                               a.get("dilation", 1), a.get("ceil_mode", False))
            return torch.clamp(y.to(torch.int32), q["lo"], q["hi"])
        if n.op == "gap":
            acc = (x - zp_in).sum(dim=(2, 3), keepdim=True, dtype=torch.int64).to(torch.int32)
            return arith.requantize(acc, torch.from_numpy(p["m"]), zp_out, q["lo"], q["hi"])
        w, b = torch.from_numpy(p["w_q"]), torch.from_numpy(p["bias_q"])
        if n.op == "conv":
            acc = arith.conv_acc(x, zp_in, w, b, n.attrs["stride"], n.attrs["padding"])
        else:
            acc = arith.linear_acc(x.flatten(1), zp_in, w, b)
        res = codes[n.residual] if n.residual is not None else None
        res_zp = self._qp(n.residual)[1] if res is not None else 0
        y = arith.requantize(acc, torch.from_numpy(p["m"]), zp_out, q["lo"], q["hi"], res, res_zp,
                             arith.f32(q.get("res_m", 0.0)))
        return y.reshape(x.shape[0], *n.shape)

    def _run_fallback(self, n: Node, codes: dict[str, torch.Tensor]) -> torch.Tensor:
        xs = [arith.dequantize(codes[i], *self._qp(i)) for i in n.inputs]
        res = arith.dequantize(codes[n.residual], *self._qp(n.residual)) if n.residual else None
        return arith.quantize(run_node(n, xs, res), *self._qp(n.name))

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``quantized.json`` (format, graph structure, tensor parameters, fallback list) and
        ``quantized.safetensors`` (every node's tensors) in one atomic directory swap."""
        gj, gt = self.graph.to_json()

        def write(d: Path) -> None:
            save_tensors(d / TENSORS, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in gt.items()})
            write_json(d / META, {"format": FORMAT, "version": FORMAT_VERSION, "patsparse_version": __version__,
                                  "graph": gj, "qparams": self.qparams, "fallback": self.fallback,
                                  "normalization": getattr(self, "patsparse_normalization", None)})

        return replace_dir(path, write, (META, TENSORS))


def load_quantized(path: str | os.PathLike) -> QuantizedModel:
    """A QuantizedModel saved by ``QuantizedModel.save`` (JSON + safetensors; nothing unpickled).

    The float graph is checked field by field by the compiler's own loader (compiler/validate.py:
    what reaches generated code must be numbers in range), then every int8 parameter (dtype,
    shape, code ranges) and every tensor's scale and zero point."""
    from ..compiler.validate import graph_from_file

    path = Path(path)
    meta = read_json(path / META, "quantized model")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise FormatError(f"{path / META} is not a patsparse quantized model of version {FORMAT_VERSION}")
    tensors = {k: v.numpy() for k, v in load_tensors(path / TENSORS, "quantized model tensors").items()}
    try:
        gj = copy.deepcopy(meta["graph"])
        extra = [({k: tensors[f"{i}.{k}"] for k in d["params"] if k in INT8_PARAMS}, d["attrs"].pop("q", None))
                 for i, d in enumerate(gj["nodes"])]
        for d in gj["nodes"]:
            d["params"] = [k for k in d["params"] if k not in INT8_PARAMS]
        qparams = {str(k): {"scale": float(v["scale"]), "zero_point": int(v["zero_point"])}
                   for k, v in meta["qparams"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise FormatError(f"{path}: malformed quantized model ({type(e).__name__}: {e})") from None
    g = graph_from_file(gj, tensors, str(path / META))
    for n, (params, q) in zip(g.nodes, extra):
        n.params.update(params)
        if q is not None:
            n.attrs["q"] = q
    for name in [INPUT] + [n.name for n in g.nodes]:
        p = qparams.get(name)
        if p is None or not (p["scale"] > 0 and np.isfinite(p["scale"]) and 0 <= p["zero_point"] <= 255):
            raise FormatError(f"{path}: tensor {name!r} has no valid scale / zero point")
    for n in g.nodes:
        if has_int8_kernel(n):
            _check_int8_params(n, path)
    return QuantizedModel(g, qparams, meta.get("normalization"))


def _check_int8_params(n: Node, path: Path) -> None:
    want = {} if n.op == "maxpool" else {"m": (np.float32, (n.shape[0],))}
    if n.op in ("conv", "linear"):
        want.update(w_q=(np.int8, n.params["weight"].shape), bias_q=(np.int32, (n.shape[0],)))
    for k, (dt, shape) in want.items():
        v = n.params.get(k)
        if v is None or v.dtype != dt or v.shape != tuple(shape) or (dt == np.float32 and not np.isfinite(v).all()):
            raise FormatError(f"{path}: node {n.name!r}: parameter {k} must be finite {np.dtype(dt).name} of shape {shape}")
    q = n.attrs.get("q")
    ok = isinstance(q, dict) and all(isinstance(q.get(k), int) and not isinstance(q.get(k), bool)
                                     and arith.QMIN <= q[k] <= arith.QMAX for k in ("lo", "hi"))
    res_m = q.get("res_m") if isinstance(q, dict) else None
    if not ok or q["lo"] > q["hi"] or (n.residual is not None) != isinstance(res_m, float) or \
            (res_m is not None and not (np.isfinite(res_m) and res_m > 0)) or set(q) - {"lo", "hi", "res_m"}:
        raise FormatError(f"{path}: node {n.name!r}: its int8 output range is malformed ({q!r})")


def _batches(loader: Iterable, max_batches: int | None) -> Iterable[torch.Tensor]:
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise InputError(f"quantize: calibration batch {i} is not a tensor (N, C, H, W) or a tuple "
                             f"starting with one (got {type(x).__name__})")
        yield x.to(torch.float32)


def calibrate(g: Graph, loader: Iterable, observer: str, max_batches: int | None) -> dict[str, dict]:
    """Scale and zero point of the input and of every node's output, observed in float32 on the
    loader's images (uint8, per tensor, the full 0..255 range)."""
    if observer not in OBSERVERS:
        raise InputError(f"quantize: observer must be one of {', '.join(OBSERVERS)}, got {observer!r}")
    obs = {name: OBSERVERS[observer](dtype=torch.quint8, qscheme=torch.per_tensor_affine)
           for name in [INPUT] + [n.name for n in g.nodes]}
    seen = 0
    with torch.no_grad():
        for x in _batches(loader, max_batches):
            if tuple(x.shape[1:]) != tuple(g.input_shape):
                raise InputError(f"quantize: calibration batch of shape {tuple(x.shape)}, the model takes "
                                 f"(N, {', '.join(map(str, g.input_shape))})")
            vals = {INPUT: x}
            obs[INPUT](x)
            for n in g.nodes:
                vals[n.name] = run_node(n, [vals[i] for i in n.inputs], vals.get(n.residual))
                obs[n.name](vals[n.name])
            seen += len(x)
    if not seen:
        raise InputError("quantize: the calibration loader gave no images; pass a loader with at least "
                         "one batch (a few hundred images calibrate well)")
    out = {}
    for name, o in obs.items():
        s, zp = o.calculate_qparams()
        out[name] = {"scale": float(s.reshape(-1)[0]), "zero_point": int(zp.reshape(-1)[0])}
    return out


def quantize_node(n: Node, qparams: dict[str, dict], g: Graph) -> None:
    """Add int8 parameters to one node with an int8 kernel (in place)."""
    s_in, s_out, zp_out = (qparams[n.inputs[0]]["scale"], qparams[n.name]["scale"],
                           qparams[n.name]["zero_point"])
    if n.op == "maxpool":  # no requantisation: the output shares the input's parameters
        qparams[n.name] = dict(qparams[n.inputs[0]])
        s_out, zp_out = s_in, qparams[n.name]["zero_point"]
    lo, hi = arith.act_range(n.act, s_out, zp_out)
    n.attrs["q"] = {"lo": lo, "hi": hi}
    if n.op == "gap":
        h, w = g.shape_of(n.inputs[0])[1:]
        n.params["m"] = np.full(n.shape[0], s_in / (h * w * s_out), np.float32)
    if n.op not in ("conv", "linear"):
        return
    w = torch.from_numpy(n.params["weight"]).to(torch.float32)
    wobs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                    quant_min=-arith.WMAX, quant_max=arith.WMAX)
    wobs(w)
    s_w = wobs.calculate_qparams()[0].to(torch.float64)
    shape = (-1,) + (1,) * (w.dim() - 1)
    w_q = torch.clamp(torch.round(w.to(torch.float64) / s_w.reshape(shape)), -arith.WMAX, arith.WMAX)
    bias = n.params.get("bias", np.zeros(n.shape[0], np.float32)).astype(np.float64)
    bias_q = np.clip(np.round(bias / (s_in * s_w.numpy())), -2 ** 31, 2 ** 31 - 1)
    n.params["w_q"] = w_q.numpy().astype(np.int8)
    n.params["bias_q"] = bias_q.astype(np.int32)
    n.params["m"] = (s_in * s_w.numpy() / s_out).astype(np.float32)
    if n.residual is not None:
        n.attrs["q"]["res_m"] = float(np.float32(qparams[n.residual]["scale"] / s_out))


def quantize(model: Any, calibration_loader: Iterable, *, example_input: torch.Tensor | None = None,
             observer: str = "histogram", max_batches: int | None = 32) -> QuantizedModel:
    """An int8 version of ``model`` (an nn.Module), calibrated on ``calibration_loader``.

    ``calibration_loader``: any iterable of image batches (N, C, H, W), or of tuples starting
    with one (a DataLoader of (images, labels)); at most ``max_batches`` are used (None: all).
    ``observer``: "histogram" (torch.ao's HistogramObserver, which minimises the quantisation
    error; the default) or "minmax" (the observed range). Weights are int8 per output channel,
    symmetric. Activations outside the calibrated range saturate. Layers without an int8 kernel
    run in float32 and are listed in the result's ``fallback``. Compile the result with
    ``ps.compile(q, example_input)`` for int8 kernels.
    """
    from ..compiler.api import capture

    if not isinstance(model, nn.Module):
        raise InputError(f"quantize takes an nn.Module, got {type(model).__name__}")
    if example_input is None:
        first = next(iter(_batches(calibration_loader, 1)), None)
        if first is None:
            raise InputError("quantize: the calibration loader gave no images; pass a loader with at least "
                             "one batch (a few hundred images calibrate well)")
        example_input = first[:1]
    g = capture(model.eval(), example_input)
    qparams = calibrate(g, calibration_loader, observer, max_batches)
    for n in g.nodes:
        if has_int8_kernel(n):
            quantize_node(n, qparams, g)
    return QuantizedModel(g, qparams, getattr(model, "patsparse_normalization", None))
