"""How a windowed kernel (conv, depthwise) reads its input: straight from the layout, or via a prep.

For output pixel (oh, ow) and tap (kh, kw) a kernel needs X[oh*s + kh - P][ow*s + kw - P]
(zero outside the image). Two ways to get it:

* direct: the input halo is at least the conv padding, so the layout's zero halo *is* the
  padding. Loads are unit-stride when s == 1; at s == 2 a kernel may use ``ps_load_s2``.
* phase planes: a prep pass (an ``omp for`` split over the team, then a barrier) copies the
  input into per-thread scratch as s*s space-to-depth phases of the zero-padded input,
  phase (py, px) holding Xpad[s*r + py][s*c + px]. Every stride becomes unit-stride loads at
  compile-time offsets, and any input halo (even none, as for the model input) works.
  The prep's loop runs phase rows outermost, so its static split gives each thread a band of
  rows across all channels: the rows its own output tiles read next (consumers split output
  rows the same way), copied from input rows the same thread wrote in the layer before. Split
  by channel instead, half of every copy and half of every tile's reads crossed between
  cores, which costs little when the two cores share a last-level cache and a lot when the
  host puts them on different core complexes (docs/COMPILER.md, "Known limits").

``InputAccess`` gives the C expressions a kernel needs either way.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..layout import Layout, round_up
from .common import MAX_VL


@dataclass(frozen=True)
class InputAccess:
    src: str            # C name of the buffer to read ("in" or the scratch)
    direct: bool        # reading the layout itself (no prep)
    step: int           # input columns per output column in ``src`` (1, or s when direct)
    row_stride: int     # floats between consecutive output rows' first tap (per output row)
    cs: int             # floats between channels in ``src``
    origin: int         # offset of output (0, 0)'s tap (0, 0) inside a channel of ``src``
    tap_off: tuple[int, ...]  # offset of tap (kh, kw), row-major, relative to origin
    scratch: str        # C declaring the scratch (every thread of the team runs it), or ""
    prep: str           # C filling it (split over the team, ends with a barrier), or ""


def input_access(name: str, *, channels: int, k: int, stride: int, padding: int,
                 in_layout: Layout, Ho: int, Wo: int, allow_strided: bool, row_align: int = MAX_VL,
                 vl: int = MAX_VL) -> InputAccess:
    """Direct access when the halo allows it (and the stride is 1 or ``allow_strided``), else a prep.

    Phase rows hold the ``Wo`` outputs rounded up to whole ``vl``-float vectors plus the taps'
    reach, and start every ``row_align`` floats: aligned rows for kernels that want them, dense
    rows (a smaller scratch that stays in cache) for kernels that load unaligned anyway.
    """
    s, P, K, L = stride, padding, k, in_layout
    if L.pad >= P and (s == 1 or allow_strided):
        return InputAccess(
            src="in", direct=True, step=s, row_stride=s * L.ld, cs=L.ps,
            origin=(L.pad - P) * L.ld + (L.pad - P),
            tap_off=tuple(kh * L.ld + kw for kh in range(K) for kw in range(K)),
            scratch="", prep="")
    # only the phases some tap reads are built (a 1x1 stride-2 conv needs phase (0, 0) alone)
    phases = sorted({(kh % s, kw % s) for kh in range(K) for kw in range(K)})
    nph, hph = len(phases), Ho + (K - 1) // s
    ldp = round_up(round_up(Wo, vl) + (K - 1) // s, row_align)
    phs = hph * ldp
    cs = nph * phs
    tap_off = tuple(phases.index((kh % s, kw % s)) * phs + (kh // s) * ldp + kw // s
                    for kh in range(K) for kw in range(K))
    scratch = f"""
    PS_SCRATCH(scr, {channels * cs}, "{name}");"""
    ncol = min(ldp, (L.ld - (L.pad - P)) // s)  # phase columns that lie inside a source row
    through_halo = L.pad >= P and (ncol == ldp or all(s * ncol + px - P >= L.W for _, px in phases))
    prep = (_prep_from_halo(channels, s, P, L, phases, hph, ldp, phs, cs, ncol) if through_halo
            else _prep_general(channels, s, P, L, phases, hph, ldp, phs, cs))
    return InputAccess(src="scr", direct=False, step=1, row_stride=ldp, cs=cs, origin=0,
                       tap_off=tap_off, scratch=scratch, prep=prep)


def _prep_from_halo(channels: int, s: int, P: int, L: Layout, phases: list, hph: int, ldp: int,
                    phs: int, cs: int, ncol: int) -> str:
    """Phase rows read straight through the input's zero halo (its halo covers the padding).

    Why: one pass per padded source row writes every column phase taken from it, with
    compile-time trip counts and no edge cases, so GCC vectorises the deinterleave; the general
    prep below (one pass per phase row, bounds per row) took half of a stride-2 layer's time.
    Phase columns from ``ncol`` on lie past the source row and right of the image: zeros."""
    by_py: dict[int, list[tuple[int, int]]] = {}  # row phase -> (column phase, its offset)
    for i, (py, px) in enumerate(phases):
        by_py.setdefault(py, []).append((px, i * phs))
    pys = sorted(by_py)
    tail = f" for (int c = {ncol}; c < {ldp}; c++) d[c] = 0.0f;" if ncol < ldp else ""
    body = "\n".join(
        f"        if (py == {py}) {{ float *d = base + {off}; for (int c = 0; c < {ncol}; c++)"
        f" d[c] = sr[{s} * c + {px}];{tail} }}" for py in pys for px, off in by_py[py])
    zero_rows = "\n".join(
        f"            if (py == {py}) {{" + "".join(f" memset(base + {off}, 0, {ldp} * sizeof(float));"
                                               for _, off in by_py[py]) + " }" for py in pys)
    return f"""
    {{
    static const int PYS[{len(pys)}] = {{{", ".join(map(str, pys))}}};
    #pragma omp for schedule(static) nowait
    for (int q = 0; q < {channels * len(pys) * hph}; q++) {{
        const int r = q / {channels * len(pys)}, ci = q / {len(pys)} % {channels}, py = PYS[q % {len(pys)}];
        float *base = scr + (size_t)ci * {cs} + r * {ldp};
        const int y = {s} * r + py - {P};
        if (y < 0 || y >= {L.H}) {{
{zero_rows}
            continue;
        }}
        const float *sr = in + (size_t)ci * {L.ps} + (y + {L.pad}) * {L.ld} + {L.pad - P};
{body}
    }}
    ps_barrier();
    }}"""


def _prep_general(channels: int, s: int, P: int, L: Layout, phases: list, hph: int, ldp: int,
                  phs: int, cs: int) -> str:
    """Phase rows of any input (the model input has no halo): each row bounds-checked, zeros
    written where the padded input is outside the image."""
    nph = len(phases)
    pys = ", ".join(str(p[0]) for p in phases)
    pxs = ", ".join(str(p[1]) for p in phases)
    return f"""
    {{
    static const int PYS[{nph}] = {{{pys}}}, PXS[{nph}] = {{{pxs}}};
    #pragma omp for schedule(static) nowait
    for (int q = 0; q < {channels * nph * hph}; q++) {{
        int r = q / {channels * nph}, ci = q / {nph} % {channels}, ph = q % {nph};
        float *d = scr + (size_t)ci * {cs} + ph * {phs} + r * {ldp};
        int y = {s} * r + PYS[ph] - {P};
        if (y < 0 || y >= {L.H}) {{ memset(d, 0, {ldp} * sizeof(float)); continue; }}
        const float *sr = in + (size_t)ci * {L.ps} + (y + {L.pad}) * {L.ld} + {L.pad};
        int x0 = PXS[ph] - {P};              /* input column of phase column 0 */
        int c0 = x0 >= 0 ? 0 : (-x0 + {s - 1}) / {s};
        int c1 = ({L.W} - 1 - x0) >= 0 ? ({L.W} - 1 - x0) / {s} + 1 : 0;
        if (c1 > {ldp}) c1 = {ldp};
        if (c0 > c1) c0 = c1;
        for (int c = 0; c < c0; c++) d[c] = 0.0f;
        for (int c = c0; c < c1; c++) d[c] = sr[{s} * c + x0];
        for (int c = c1; c < {ldp}; c++) d[c] = 0.0f;
    }}
    ps_barrier();
    }}"""


@dataclass(frozen=True)
class CompactAccess:
    """A 1x1 conv's input as compact planes: output pixel p = h * Wo + w of channel ci at
    ``scr[ci * cs + p]`` (zero from Ho * Wo to ``cs``), so vectors run over the flattened plane."""

    cs: int        # floats per channel of the scratch (Ho * Wo rounded up to whole vectors)
    scratch: str   # C declaring it
    prep: str      # C filling it (split over the team, ends with a barrier)


def compact_access(name: str, *, channels: int, stride: int, in_layout: Layout, Ho: int,
                   Wo: int, batched: bool = False) -> CompactAccess:
    """The prep that packs each channel's (strided) pixels densely for a 1x1 conv, padding 0.

    Why: a 7x7 plane fills 7 of 16 lanes per row vector (MobileNet-V2's last stages, ResNet's
    last downsample), so a row-vector tile computes 2.3x the useful FMAs; over the flattened
    plane the 49 pixels take 4 vectors. The copy touches each input element once against
    Cout FMAs per element. ``batched``: the prep of a batched kernel (base.BATCHED_PARAMS)
    packs the block's ``nb`` images, image b's planes ``b * channels * cs`` floats in."""
    L, s = in_layout, stride
    cs = round_up(Ho * Wo, MAX_VL)
    images = "(size_t)nb * " if batched else ""
    scratch = f"""
    PS_SCRATCH(scr, {images}{channels * cs}, "{name}");"""
    prep = f"""
    {{
    #pragma omp for schedule(static) nowait
    for (int q = 0; q < {'nb * ' if batched else ''}{channels * Ho}; q++) {{
        const int ci = q / {Ho} % {channels}, h = q % {Ho}{f", b = q / {channels * Ho}" if batched else ""};
        const float *restrict sr = in{" + b * is" if batched else ""} + (size_t)ci * {L.ps} + ({s} * h + {L.pad}) * {L.ld} + {L.pad};
        float *restrict d = scr + {f"((size_t)b * {channels} + ci)" if batched else "(size_t)ci"} * {cs};
        for (int w = 0; w < {Wo}; w++) d[h * {Wo} + w] = sr[{s} * w];
        if (h == {Ho - 1}) for (int p = {Ho * Wo}; p < {cs}; p++) d[p] = 0.0f;
    }}
    ps_barrier();
    }}"""
    return CompactAccess(cs=cs, scratch=scratch, prep=prep)


def compact_rows_c(slot: str, Ho: int, Wo: int, origin: int, ld: int, image: str = "") -> list[str]:
    """C opening the loop over the output rows that compact vector ``slot`` (pixels slot * VL ..
    slot * VL + VL - 1 of the flattened Ho x Wo plane) touches. Inside, ``m`` has the bits of
    the lanes in that row and ``o`` is the offset, in a plane of row stride ``ld`` whose pixel
    (0, 0) is at ``origin`` (past ``image``, C of an image's offset, if given), where lane 0
    would go: ``vstore_lanes(plane + o, m, v)`` stores the row's part. The caller closes the
    loop's brace."""
    return [f"const int p0 = {slot} * VL;",
            f"for (int h = p0 / {Wo}; h < {Ho} && h * {Wo} < p0 + VL; h++) {{",
            f"  const int lo = h * {Wo} > p0 ? h * {Wo} - p0 : 0,"
            f" hi = (h + 1) * {Wo} < p0 + VL ? (h + 1) * {Wo} - p0 : VL;",
            "  const unsigned m = (unsigned)((1ull << hi) - (1ull << lo));",
            f"  const size_t o = {image}{origin} + (size_t)h * {ld - Wo} + p0;"]
