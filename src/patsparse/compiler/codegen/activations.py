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
_MAPPED = {"elu": "ps_elu", "selu": "ps_selu", "tanh": "tanhf", "gelu": "ps_gelu", "softplus": "ps_softplus"}
# activations with a vector form of their own (ps_vexp: EfficientNet's SiLU epilogues on every
# expand and depthwise conv made those convs several times slower lane by lane through libm)
_VECTOR = {"sigmoid": "ps_vsigmoid", "silu": "ps_vsilu"}


def _lit(v: float) -> str:
    """An exact C float literal for float32 value ``v`` (infinities included)."""
    if math.isinf(v):
        return "INFINITY" if v > 0 else "(-INFINITY)"
    return f"{v!r}f"


# Scalar forms of the transcendental activations; the vector forms map them over the lanes
# (libm has no vector exp/erf the portable dialect may rely on), but for sigmoid and SiLU, whose
# exp is ps_vexp: Cephes' expf in vector operations (x = n ln 2 + r, a degree-7 polynomial for
# e^r, 2^n built in the exponent bits; within 2 ulp of expf), which keeps PyTorch's results for
# NaN and +-inf. ps_clip keeps a NaN.
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
static inline vf ps_vexp(vf x) {
    const vf hi = vbcast(88.3762626647949f), lo = vbcast(-87.3365478515625f);
    vf c = vselect(x > hi, hi, vselect(x < lo, lo, x));  /* a NaN goes on as it is */
    vf f = c * vbcast(1.44269504088896341f) + vbcast(0.5f);
    vf n = __builtin_convertvector(__builtin_convertvector(f, vi), vf);
    n = vselect(n > f, n - vbcast(1.0f), n);  /* floor */
    vf r = c - n * vbcast(0.693359375f) + n * vbcast(2.12194440e-4f);
    vf p = vbcast(1.9875691500e-4f);
    p = p * r + vbcast(1.3981999507e-3f);
    p = p * r + vbcast(8.3334519073e-3f);
    p = p * r + vbcast(4.1665795894e-2f);
    p = p * r + vbcast(1.6666665459e-1f);
    p = p * r + vbcast(5.0000001201e-1f);
    p = p * r * r + r + vbcast(1.0f);
    vf y = p * (vf)((__builtin_convertvector(n, vi) + 127) << 23);
    y = vselect(x > vbcast(88.72283935546875f), vbcast(INFINITY), y);
    return vselect(x < lo, (vf){0}, y);  /* e^x is below the smallest normal float there */
}
static inline vf ps_vsigmoid(vf x) { return vbcast(1.0f) / (vbcast(1.0f) + ps_vexp(-x)); }
static inline vf ps_vsilu(vf x) { return x / (vbcast(1.0f) + ps_vexp(-x)); }
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
    if name in _VECTOR:
        return f"{_VECTOR[name]}({expr})"
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
    scalar = {**_MAPPED, "sigmoid": "ps_sigmoid", "silu": "ps_silu", "leaky_relu": "ps_leaky", "clip": "ps_clip",
              "hardswish": "ps_hardswish"}
    if name in scalar:
        fn = scalar[name]
        return f"{fn}({', '.join([expr] + lit)})"
    if name == "hardsigmoid":
        return f"ps_clip(({expr}) * {lit[0]} + {lit[1]}, 0.0f, 1.0f)"
    return {"none": expr, "relu": f"srelu({expr})", "relu6": f"srelu6({expr})"}[name]
