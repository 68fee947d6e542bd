"""benchmarks/int8.py's per-layer table: a row per layer of the int8 model and a total, float and
int8 times side by side, every conv's quads named (no timing asserted)."""

from benchmarks import int8


def test_profile_rows_cover_every_layer_and_name_each_convs_quads():
    rows = int8.profile_rows("resnet8", 8.0, 1, 16, rounds=1)
    assert rows[-1][0] == "total" and rows[-1][-1].endswith("x")
    layers = rows[:-1]
    convs = [r for r in layers if r[1] == "conv"]
    assert len(convs) >= 7  # the stem, six 3x3 convs and the downsampling 1x1s
    for r in convs:
        kind, quads = r[4].split()
        assert kind in ("pattern", "channel") and int(quads) > 0 and float(r[5]) > 0
        assert "->" in r[3]
    assert all(float(r[7]) >= 0 for r in layers)
    assert any(r[4].startswith("pattern") for r in convs)  # 8x: 3x3 kernels form pattern quads
