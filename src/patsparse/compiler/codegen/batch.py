"""How a batched dense kernel (igemm row tiles, cvec) walks its work: (pixel tile, channel tile)
units over the images of a block.

Each image has NS output slots (row vectors, or pixels); a tile takes ``per_tile`` of them, a
channel tile MR output channels. For one image the loop order decides which operand each unit
re-streams (common.loop_order). For a block of images there are three walks, and the one that
moves the fewest bytes wins (``batch_walk``):

* pooled, channel tiles outer: the slots of all images form one pool, so a weight panel serves
  every image (the walk that pays where weights are big and planes small: VGG's 4x4 and 2x2
  layers stream 9.4 MB of weights per image otherwise) but the block's inputs are re-read per
  channel tile;
* pooled, pixel tiles outer: every tile re-reads all weights, as one image's ``pix`` walk does;
* image by image, each in its one-image order and split over the team as one image is (so a
  thread keeps its share of the weights across the images): what a loop over images did, for
  layers whose block of inputs would not stay in L2 (a 32x32 plane of 64 channels is 0.4 MB an
  image).

Pooled tiles may span two images (tile slots ``s`` of image ``s / NS``), so small planes fill
their tiles; the team splits the units of the whole walk.
"""

from __future__ import annotations

ORDERS = ("pix", "co")


def _traffic(times: int, nbytes: int, l2_bytes: int) -> float:
    """Bytes moved re-reading ``nbytes`` ``times`` times, a read that spills L2 counted 3x."""
    return times * nbytes * (1 if nbytes <= l2_bytes else 3)


def batch_walk(*, images: int, order: str, ns: int, per_tile: int, nct: int, src_floats: int,
               weight_floats: int, out_floats: int, l2_bytes: int) -> tuple[bool, str]:
    """(image by image, order) for a block of ``images`` images: image by image in the one-image
    ``order``, or pooled in the returned order (module docstring). ``src_floats``,
    ``out_floats``: one image's input and output; an output over 1 MB is never walked pixel
    tiles outer across images (its stores hop across every channel plane: loop_order)."""
    n, src, w = images, 4 * src_floats, 4 * weight_floats
    t = lambda times, nbytes: _traffic(times, nbytes, l2_bytes)  # noqa: E731
    one = t(nct, src) + t(1, w) if order == "co" else t(-(-ns // per_tile), w) + t(1, src)
    walks = {(False, "co"): t(nct, n * src) + t(1, w), (True, order): n * one}
    if out_floats * 4 <= 1024 * 1024:
        walks[(False, "pix")] = t(-(-n * ns // per_tile), w) + t(1, n * src)
    return min(walks, key=walks.get)


def units_c(*, ns: str, per_tile: int, nct: int, order: str, batched: bool,
            walk: tuple[bool, str] = (False, "co")) -> tuple[str, str]:
    """C opening and closing the loop over the kernel's units (``ns``: C for one image's slot
    count): inside it ``pt`` and ``ct`` are set, batched also ``img`` (the image of an
    image-by-image walk, else 0), and ``NST`` is the slot count of the pool ``pt`` indexes. One image: ``order``; a
    batched kernel's ``nb`` > 1 images: ``walk`` (batch_walk)."""
    p = per_tile
    if not batched:
        return (f"    enum {{ NST = {ns}, NPT = (NST + {p - 1}) / {p} }};\n"
                f"    #pragma omp for schedule(static) nowait\n"
                f"    for (int u = 0; u < NPT * {nct}; u++) {{\n"
                f"        int pt = {'u / ' + str(nct) if order == 'pix' else 'u % NPT'}, "
                f"ct = {'u % ' + str(nct) if order == 'pix' else 'u / NPT'};"), "    }"
    each, border = walk
    pix = f"nb > 1 ? {int(border == 'pix')} : {int(order == 'pix')}"
    return (f"    const int each = nb > 1 && {int(each)}, pix = {pix};\n"
            f"    const int NST = each ? {ns} : nb * ({ns}), NPT = (NST + {p - 1}) / {p};\n"
            f"    for (int img = 0; img < (each ? nb : 1); img++) {{\n"
            f"    #pragma omp for schedule(static) nowait\n"
            f"    for (int u = 0; u < NPT * {nct}; u++) {{\n"
            f"        int pt = pix ? u / {nct} : u % NPT, ct = pix ? u % {nct} : u / NPT;"), "    }\n    }"


def slot_c(j: int, per_tile: int, ns: str, batched: bool) -> str:
    """C setting slot ``s{j}`` of tile ``pt`` (clamped to the tile's first when past the pool:
    ``ok{j}`` 0) and, batched, its image ``i{j}`` with ``s{j}`` made image-relative."""
    line = (f"        int s{j} = pt * {per_tile} + {j}, ok{j} = s{j} < NST; "
            f"if (!ok{j}) s{j} = pt * {per_tile};")
    if batched:
        line += f"\n        const int i{j} = img + s{j} / ({ns}); s{j} %= ({ns});"
    return line
