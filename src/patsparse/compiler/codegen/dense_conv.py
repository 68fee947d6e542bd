"""Dense KxK convolution (groups=1): first convs, the 7x7 stem, dense 3x3 layers.

All sizes share one register-blocked implicit-GEMM engine (igemm.py): the KxK taps are
unrolled at compile-time offsets inside the reduction over input channels, so a 3x3 stride-1
conv on a padded layout is loads at constant offsets + FMAs with an MRxNR tile in registers.
Stride 2 (3x3 s2, the 7x7 s2 stem) reads the input in place with two loads and a shuffle per
vector, or through a phase-plane prep pass, whichever the cost model ranks first; inputs whose
halo is narrower than the conv padding always go through the prep (see igemm.py). 1x1 convs
are delegated to gemm.gen_conv1x1.

A 3x3 stride-1 conv whose input halo covers its padding may also run as Winograd F(2x2, 3x3) or
F(4x4, 3x3) (winograd.py, schedule ``{"wino": m, "mr", "nr"}``): 2.25-4x fewer multiplies for
two transform passes. It is one more family in the same ranking (``schedules``), so the cost
model picks it as the untuned default where it ranks first and the tuner measures it beside the
implicit-GEMM tiles.
"""

from __future__ import annotations

from ...errors import InputError, UnsupportedError
from ..layout import Layout
from ..target import Target
from .base import GeneratedKernel
from .common import (check_act, check_layout_types, check_layouts, check_name, check_positive,
                     conv_out_size)
from .gemm import gen_conv1x1
from .igemm import direct_s2_floats, gen_igemm
from .igemm import ranked as _igemm_ranked
from .igemm import schedules as _igemm_schedules
from . import winograd

MAX_K = 7


def schedules(*, cout: int, out_layout: Layout, cin: int | None = None, k: int = 1,
              padding: int = 0, stride: int = 1, in_layout: Layout | None = None,
              target: Target) -> list[dict]:
    """Candidate schedules for a conv writing ``out_layout``, best-by-heuristic first (see
    igemm.schedules); ``cin`` and ``k`` sharpen the ranking when given, ``stride`` and
    ``in_layout`` add in-place stride-2 tiles where they apply."""
    return _igemm_schedules(**_ranking_args(cout, out_layout, cin, k, padding, stride, in_layout, target))


def ranked(*, cout: int, out_layout: Layout, cin: int | None = None, k: int = 1,
           padding: int = 0, stride: int = 1, in_layout: Layout | None = None,
           target: Target) -> list[tuple[float, float, dict]]:
    """(modelled cycles, tie-break, schedule) of the candidates of ``schedules``, cheapest first
    (igemm.ranked): what a pattern conv's own cost is weighed against (kernels.py)."""
    return _igemm_ranked(**_ranking_args(cout, out_layout, cin, k, padding, stride, in_layout, target))


def _ranking_args(cout: int, out_layout: Layout, cin: int | None, k: int, padding: int, stride: int,
                  in_layout: Layout | None, target: Target) -> dict:
    s2 = direct_s2_floats(k=k, stride=stride, padding=padding, in_layout=in_layout) if in_layout else 0
    wino = in_layout is not None and winograd.applies(k=k, stride=stride, padding=padding, in_layout=in_layout)
    others = winograd.candidates(cin=cin or 256, cout=cout, Ho=out_layout.H, Wo=out_layout.W,
                                target=target) if wino else []
    return dict(cout=cout, Ho=out_layout.H, Wo=out_layout.W, cin=cin, k=k, compact=k == 1 and padding == 0,
                s2_input=s2, others=tuple(others), target=target)


def gen_conv2d(name: str, *, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0,
               in_layout: Layout, out_layout: Layout, act: str = "none",
               has_residual: bool = False, schedule: dict | None = None,
               target: Target, images: int = 1) -> GeneratedKernel:
    """Dense conv2d, groups=1, square kernel ``k`` (1..7), stride 1 or 2, zero padding.

    Weight shape (cout, cin, k, k). ``in_layout.pad`` may be smaller than ``padding`` (then no
    Winograd schedule). ``schedule`` None: the first of ``schedules``. ``images``: the image
    block the model runs (igemm.gen_igemm's walk over it; a Winograd kernel takes any block).
    """
    where = f"conv2d kernel {name}"
    check_name(name)
    check_positive(where, cin=cin, cout=cout, k=k, stride=stride)
    check_act(act, where)
    if k > MAX_K:
        raise UnsupportedError(f"{where}: kernel size {k} > {MAX_K} is not supported")
    if stride > 2:
        raise UnsupportedError(f"{where}: stride {stride} is not supported (1 or 2)")
    if not 0 <= padding < k:
        raise InputError(f"{where}: padding {padding} must be in [0, {k - 1}] for a {k}x{k} kernel")
    check_layout_types(where, in_layout, out_layout)
    if k == 1:
        return gen_conv1x1(name, cin=cin, cout=cout, stride=stride, padding=padding,
                           in_layout=in_layout, out_layout=out_layout, act=act,
                           has_residual=has_residual, schedule=schedule, target=target, images=images)
    Ho = conv_out_size(in_layout.H, k, stride, padding, where)
    Wo = conv_out_size(in_layout.W, k, stride, padding, where)
    check_layouts(where, in_layout, out_layout, (cin, in_layout.H, in_layout.W), (cout, Ho, Wo))
    if schedule is None:
        schedule = schedules(cout=cout, out_layout=out_layout, cin=cin, k=k, padding=padding,
                             stride=stride, in_layout=in_layout, target=target)[0]
    if isinstance(schedule, dict) and "wino" in schedule:
        if not winograd.applies(k=k, stride=stride, padding=padding, in_layout=in_layout):
            raise InputError(f"{where}: a Winograd schedule needs a 3x3 stride-1 conv with padding 0 or 1 "
                             f"inside the input halo (got {k}x{k}, stride {stride}, padding {padding}, "
                             f"halo {in_layout.pad})")
        return winograd.gen_winograd(name, cin=cin, cout=cout, padding=padding, in_layout=in_layout,
                                     out_layout=out_layout, act=act, has_residual=has_residual,
                                     schedule=schedule, where=where, target=target)
    return gen_igemm(name, cin=cin, cout=cout, k=k, stride=stride, padding=padding,
                     in_layout=in_layout, out_layout=out_layout, act=act,
                     has_residual=has_residual, schedule=schedule, where=where, target=target,
                     images=images)
