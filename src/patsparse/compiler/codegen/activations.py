"""The activation family: one place that names every activation, parses its parameters and
renders it as C, fused into a kernel's epilogue or standalone (channelwise.py).

An activation is a string, so it travels through the IR, its JSON and every generator as
``Node.act`` does: a bare name (``"relu"``, ``"sigmoid"``) or a name with its float parameters,
``"leaky_relu:0.01"``, ``"clip:-1.0,1.0"``, ``"softplus:1.0,20.0"``. Parameters are float32
values (``spec`` rounds them) written back exactly as C literals, so the kernels compute what
PyTorch computes with the same float32 constants.

NaN and Inf follow PyTorch: every form propagates a NaN input, and the products that PyTorch
evaluates as ``inf * 0`` (SiLU and Hardswish at -inf, GELU at -inf) give NaN here too. One
documented difference: GELU at +inf is inf here, as the formula says; PyTorch's vectorised erf
returns NaN there (its scalar path returns inf). relu and relu6 keep the shared prelude's forms
(base.py).
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import UnsupportedError

# name -> number of float parameters
PARAMS = {"none": 0, "relu": 0, "relu6": 0, "leaky_relu": 1, "elu": 1, "selu": 0, "sigmoid": 0,
          "hardsigmoid": 2, "tanh": 0, "silu": 0, "hardswish": 0, "gelu": 0, "softplus": 2, "clip": 2}
# PyTorch's SELU constants (torch/nn/modules/activation.py)
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def spec(name: str, *params: float) -> str:
    """The activation string of ``name`` with ``params`` (rounded to float32)."""
    if PARAMS.get(name) != len(params):
        raise UnsupportedError(f"activation {name!r} with {len(params)} parameters is not supported")
    if not params:
        return name
    return name + ":" + ",".join(repr(float(np.float32(p))) for p in params)


def parse(act: str) -> tuple[str, tuple[float, ...]]:
    """(name, parameters) of an activation string; UnsupportedError for anything else."""
    name, _, rest = str(act).partition(":")
    try:
        params = tuple(float(p) for p in rest.split(",")) if rest else ()
    except ValueError:
        params = None
    if params is None or PARAMS.get(name) != len(params) or any(math.isnan(p) for p in params):
        raise UnsupportedError(f"activation {act!r} is not supported (supported: {', '.join(PARAMS)}, "
                               "parameters as name:p1,p2)")
    return name, params


# activations whose vector form maps their scalar C function over the lanes
_MAPPED = {"elu": "ps_elu", "selu": "ps_selu", "sigmoid": "ps_sigmoid", "tanh": "tanhf", "silu": "ps_silu",
           "gelu": "ps_gelu", "softplus": "ps_softplus"}


def _lit(v: float) -> str:
    """An exact C float literal for float32 value ``v`` (infinities included)."""
    if math.isinf(v):
        return "INFINITY" if v > 0 else "(-INFINITY)"
    return f"{v!r}f"


# Scalar forms of the transcendental activations; the vector forms map them over the lanes
# (libm has no vector exp/erf the portable dialect may rely on). ps_clip keeps a NaN.
HELPERS = r"""
#ifndef PATSPARSE_ACTIVATIONS
#define PATSPARSE_ACTIVATIONS
static inline float ps_clip(float x, float lo, float hi) { x = x < lo ? lo : x; return x > hi ? hi : x; }
static inline vf vclip(vf x, float lo, float hi) {
    const vf l = vbcast(lo), h = vbcast(hi);
    x = vselect(x < l, l, x);
    return vselect(x > h, h, x);
}
static inline float ps_leaky(float x, float a) { return x > 0.0f ? x : x * a; }
static inline vf vleaky(vf x, vf a) { return vselect(x > (vf){0}, x, x * a); }
static inline float ps_elu(float x, float a) { return x > 0.0f ? x : a * expm1f(x); }
static inline float ps_selu(float x) { return x > 0.0f ? x * SELU_SCALE : (SELU_SCALE * SELU_ALPHA) * expm1f(x); }
static inline float ps_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
static inline float ps_silu(float x) { return x / (1.0f + expf(-x)); }
static inline float ps_gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f)); }
static inline float ps_softplus(float x, float b, float t) { return x * b > t ? x : log1pf(expf(x * b)) / b; }
static inline float ps_hardswish(float x) { return x * ps_clip(x + 3.0f, 0.0f, 6.0f) / 6.0f; }
static inline vf vhardswish(vf x) { return x * vclip(x + vbcast(3.0f), 0.0f, 6.0f) / vbcast(6.0f); }
/* f applied to every lane of v (f's further arguments after it) */
#define PS_VMAP(v, f, ...) ({ vf ps_m_ = (v); for (int ps_l_ = 0; ps_l_ < VL; ps_l_++) \
                              ps_m_[ps_l_] = f(ps_m_[ps_l_], ##__VA_ARGS__); ps_m_; })
#endif
""".replace("SELU_SCALE", _lit(float(np.float32(SELU_SCALE)))).replace(
    "SELU_ALPHA", _lit(float(np.float32(SELU_ALPHA))))


def vector_c(act: str, expr: str) -> str:
    """C applying ``act`` to the vector expression ``expr``."""
    name, p = parse(act)
    lit = [_lit(v) for v in p]
    if name in _MAPPED:
        return f"PS_VMAP({expr}, {', '.join([_MAPPED[name]] + lit)})"
    if name == "leaky_relu":
        return f"vleaky({expr}, vbcast({lit[0]}))"
    if name == "hardsigmoid":
        return f"vclip(({expr}) * vbcast({lit[0]}) + vbcast({lit[1]}), 0.0f, 1.0f)"
    if name == "clip":
        return f"vclip({expr}, {lit[0]}, {lit[1]})"
    return {"none": expr, "relu": f"vrelu({expr})", "relu6": f"vrelu6({expr})",
            "hardswish": f"vhardswish({expr})"}[name]


def scalar_c(act: str, expr: str) -> str:
    """C applying ``act`` to the scalar expression ``expr``."""
    name, p = parse(act)
    lit = [_lit(v) for v in p]
    if name in _MAPPED or name in ("leaky_relu", "clip", "hardswish"):
        fn = _MAPPED.get(name) or {"leaky_relu": "ps_leaky", "clip": "ps_clip", "hardswish": "ps_hardswish"}[name]
        return f"{fn}({', '.join([expr] + lit)})"
    if name == "hardsigmoid":
        return f"ps_clip(({expr}) * {lit[0]} + {lit[1]}, 0.0f, 1.0f)"
    return {"none": expr, "relu": f"srelu({expr})", "relu6": f"srelu6({expr})"}[name]
