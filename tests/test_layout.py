from hypothesis import given, strategies as st

from patsparse.compiler.layout import VEC, Layout


@given(st.integers(1, 64), st.integers(1, 64), st.integers(1, 64), st.integers(0, 3))
def test_layout_strides_aligned_and_disjoint(C, H, W, pad):
    L = Layout(C, H, W, pad)
    assert L.ld % VEC == 0 and L.ps % VEC == 0 and L.ld >= W + 2 * pad
    last = L.index(C - 1, H - 1, W - 1)
    assert last < L.size
    # neighbouring planes never overlap, halo included
    assert L.index(0, H - 1 + pad, W - 1 + pad) < L.ps
