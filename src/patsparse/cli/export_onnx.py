"""``patsparse export-onnx SRC -o FILE``: a saved (pruned) model as a standard ONNX file."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import InputError, UnsupportedError
from .options import input_shape, model_dir, shape_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-onnx", help="write a saved (pruned) model as a standard ONNX file for other runtimes",
        description="Export SRC (a model directory written by `patsparse prune`, `patsparse train` or "
                    "patsparse.save) as ONNX opset 17 with the pruned weights as zeros in place and a "
                    "dynamic batch dimension. The sparsity summary, input shape and input normalisation "
                    "go into the file's metadata_props. When ONNX Runtime is installed the file is "
                    "run once and checked against PyTorch.",
        epilog="Examples: patsparse export-onnx runs/r18_8x -o r18.onnx | "
               "patsparse export-onnx my_model.pats -o my.onnx --input-shape 3,32,32 "
               "--mean 0.49,0.48,0.45 --std 0.25,0.24,0.26")
    p.add_argument("src", help="saved patsparse model directory (not a compiled one)")
    p.add_argument("-o", "--out", required=True, help="the .onnx file to write")
    p.add_argument("--input-shape", type=shape_arg,
                   help="C,H,W of one input image (default: the shape the saved model records)")
    p.add_argument("--mean", type=_floats, help="per-channel input mean to record (default: the saved model's)")
    p.add_argument("--std", type=_floats, help="per-channel input std to record (default: the saved model's)")
    p.set_defaults(func=run)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    import torch

    from ..onnx_export import to_onnx
    from ..serialize import MANIFEST, load

    src = model_dir(args.src, "export-onnx")
    if (src / MANIFEST).is_file():
        raise InputError(f"{args.src} is a compiled model; export the pruned model it was compiled from")
    model = load(src)
    shape = input_shape(model, args.input_shape, args.src)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32))
    path = to_onnx(model, x, args.out, mean=args.mean, std=args.std)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): input (batch, {', '.join(map(str, shape))})"
          f"{_check(model, path, x)}")
    return 0


def _check(model: torch.nn.Module, path: Path, x: torch.Tensor) -> str:
    """", checked with ONNX Runtime: ..." or a note that it is not installed."""
    import torch

    try:
        import onnxruntime as ort
    except ImportError:
        return "; ONNX Runtime is not installed, so the file was not run"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    err = float(np.abs(y - ref).max() / max(float(np.abs(ref).max()), 1e-12))
    if err > 1e-4:
        raise UnsupportedError(f"{path}: ONNX Runtime's output differs from PyTorch's by {err:.1e} of its "
                               "largest value; some layer does not export faithfully (file kept for inspection)")
    return f"; ONNX Runtime gives PyTorch's output to {err:.1e} (max difference / max |output|)"
