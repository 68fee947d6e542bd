"""The integer arithmetic of an int8 model, written once in PyTorch.

Both the simulated model (model.py) and the tests of the generated kernels use these functions,
so "bit-exact" has one meaning. The scheme (fbgemm's, with a float requantisation multiplier):

* activations: uint8 per tensor, ``real = scale * (q - zero_point)``;
* weights: int8 per output channel, symmetric in [-127, 127] (pattern zeros stay zero);
* a conv / linear accumulates ``sum w_q * (x_q - zp)`` plus an int32 bias
  ``round(bias / (s_in * s_w))`` in int32;
* requantisation is one float32 multiply per element (``m = s_in * s_w / s_out`` rounded to
  float32), plus, with a fused residual, one float32 multiply of the residual and one float32
  add; the result is clamped to the activation's range, rounded half to even and shifted by
  the output zero point. Clamping before rounding equals clamping after (both bounds are
  integers), and keeps every value small enough for the generated code's exact rounding trick.

Every step is one IEEE float32 operation with one rounding, so generated C that does the same
operations in the same order (built without FMA contraction) gives the same bits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

QMIN, QMAX = 0, 255        # activations (uint8)
WMAX = 127                 # weights: [-127, 127]


def f32(v) -> torch.Tensor:
    """A float32 tensor of ``v`` (scalar or array): multipliers are float32 values, never doubles."""
    return torch.as_tensor(v, dtype=torch.float32)


def quantize(x: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
    """float tensor -> uint8 codes (as int32): ``x * (1/scale)`` in float32, saturated to
    [0, 255] like PyTorch's fake quantisation, rounded half to even."""
    v = x.to(torch.float32) * f32(1.0 / scale)
    return torch.clamp(v, QMIN - zp, QMAX - zp).round().to(torch.int32) + zp


def dequantize(q: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
    """uint8 codes -> float32: ``(q - zp) * scale``."""
    return (q - zp).to(torch.float32) * f32(scale)


def requantize(acc: torch.Tensor, m: torch.Tensor, zp: int, lo: int, hi: int,
               res: torch.Tensor | None = None, res_zp: int = 0, res_m: torch.Tensor | None = None) -> torch.Tensor:
    """int32 accumulators (N, F, ...) -> uint8 codes in [lo, hi] (see the module docstring).

    ``m``: float32 multiplier per output channel (F,); ``res``: a fused residual's codes with
    its zero point and float32 multiplier ``res_m`` (its scale / the output's)."""
    shape = (1, -1) + (1,) * (acc.dim() - 2)
    v = acc.to(torch.float32) * m.reshape(shape)
    if res is not None:
        v = v + (res - res_zp).to(torch.float32) * res_m
    return torch.clamp(v, lo - zp, hi - zp).round().to(torch.int32) + zp


def conv_acc(x: torch.Tensor, zp: int, w: torch.Tensor, bias: torch.Tensor, stride: int, padding: int,
             groups: int = 1) -> torch.Tensor:
    """Exact int32 accumulators of a conv on uint8 codes ``x`` (zero point ``zp``) with int8
    weights: computed in float64, where every partial sum of such products is an exact integer."""
    acc = F.conv2d((x - zp).to(torch.float64), w.to(torch.float64), None, stride, padding, 1, groups)
    return acc.round().to(torch.int64).to(torch.int32) + bias.to(torch.int32).reshape(1, -1, 1, 1)


def linear_acc(x: torch.Tensor, zp: int, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Exact int32 accumulators of a linear layer (x: (N, in) codes)."""
    acc = (x - zp).to(torch.float64) @ w.to(torch.float64).t()
    return acc.round().to(torch.int64).to(torch.int32) + bias.to(torch.int32)


def act_range(act: str, scale: float, zp: int) -> tuple[int, int]:
    """The codes an output may take after its fused activation: relu clamps at the zero point,
    relu6 also at the code of 6.0."""
    if act == "relu":
        return max(QMIN, zp), QMAX
    if act == "relu6":
        return max(QMIN, zp), min(QMAX, max(zp, zp + round(6.0 / scale)))
    return QMIN, QMAX
