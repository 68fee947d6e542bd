import ctypes

import numpy as np
import pytest

from patsparse.compiler.build import compile_c
from patsparse.errors import UnsupportedError
from patsparse.compiler.codegen.base import act_c, act_scalar_c, prelude_c
from patsparse.compiler.target import detect

SRC = prelude_c(detect()) + r"""
int vl(void) { return VL; }
void apply(const float *x, float *relu, float *relu6, float *tail, int n) {
    for (int i = 0; i < n; i += VL) {
        vf v = vload(x + i);
        vstore(relu + i, vrelu(v));
        vstore(relu6 + i, vrelu6(v));
        vstore(tail + i, vand(v, vtailmask(3)));
    }
}
"""


def test_prelude_vector_helpers_match_numpy():
    lib = ctypes.CDLL(str(compile_c(SRC, name="prelude_test")))
    vl = lib.vl()
    assert vl in (4, 8, 16)
    x = np.linspace(-8, 8, 4 * vl, dtype=np.float32)
    outs = [np.empty_like(x) for _ in range(3)]
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    lib.apply(ptr(x), *map(ptr, outs), ctypes.c_int(x.size))
    np.testing.assert_array_equal(outs[0], np.maximum(x, 0))
    np.testing.assert_array_equal(outs[1], np.clip(x, 0, 6))
    expect = np.where((np.arange(x.size) % vl) < 3, x, 0)
    np.testing.assert_array_equal(outs[2], expect)


def test_unknown_activation_is_rejected():
    assert act_c("relu", "v") == "vrelu(v)" and act_scalar_c("none", "s") == "s"
    with pytest.raises(UnsupportedError, match="mish"):
        act_c("mish", "v")
    with pytest.raises(UnsupportedError, match="leaky_relu"):
        act_c("leaky_relu", "v")  # its slope is missing
