"""Memory safety of the dense kernels under AddressSanitizer + UBSan.

All kernels are built into one standalone program whose buffers have exactly the sizes the
contract promises (activation: layout size + SLACK floats; weights: the packed size; bias:
Cout floats), so a read past SLACK, a weight over-read or a bias read past Cout aborts the
program. The shapes are chosen to stress the edges: odd widths, thin halos, stride 2,
partial register tiles.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import numpy as np

from patsparse.compiler.target.host import find_compiler
from patsparse.compiler.codegen.base import SLACK, prelude_c
from patsparse.compiler.codegen.conv_pool import gen_conv_maxpool
from patsparse.compiler.codegen.dense_conv import gen_conv2d
from patsparse.compiler.codegen.depthwise import gen_depthwise
from patsparse.compiler.codegen.gemm import gen_linear
from patsparse.compiler.codegen.pool import gen_avgpool, gen_global_avgpool, gen_maxpool
from patsparse.compiler.codegen.pw_dw import Project, gen_pw_dw
from patsparse.compiler.layout import Layout
from patsparse.compiler.target import detect

HARNESS = r"""
#include <stdlib.h>
static float *buf(size_t n, float v) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n * sizeof(float) ? n * sizeof(float) : 4)) abort();
    float *f = p;
    for (size_t i = 0; i < n; i++) f[i] = v;
    return f;
}
/* run one kernel twice on buffers of exactly the contracted sizes */
static void check(void (*k)(const float *, float *, const float *, const float *, const float *),
                  size_t in_n, size_t out_n, size_t w_n, size_t b_n, int residual) {
    float *in = buf(in_n, 0.0f), *out = buf(out_n, 0.0f), *res = buf(out_n, 0.0f);
    float *w = buf(w_n, 0.5f), *b = buf(b_n, 0.25f);
    for (size_t i = 0; i + SLACK_N < in_n; i++) in[i] = (float)(i % 7) - 3.0f;
    for (int r = 0; r < 2; r++) k(in, out, w, b, residual ? res : NULL);
    free(in); free(out); free(res); free(w); free(b);
}
"""


@dataclass(frozen=True)
class Case:
    gen: object          # generator function
    kwargs: dict         # its shape arguments (name and layouts are added)
    lin: Layout
    lout: Layout
    weight: tuple[int, ...] | None   # PyTorch weight shape, None for pools
    residual: bool = False


L = Layout
CASES = {
    "conv3x3_s1": Case(gen_conv2d, dict(cin=3, cout=7, k=3, stride=1, padding=1, act="relu"),
                       L(3, 9, 37, 1), L(7, 9, 37, 0), (7, 3, 3, 3), residual=True),
    "conv7x7_s2_nohalo": Case(gen_conv2d, dict(cin=3, cout=5, k=7, stride=2, padding=3),
                              L(3, 23, 23, 0), L(5, 12, 12, 1), (5, 3, 7, 7)),
    "conv3x3_channel_vectors": Case(gen_conv2d, dict(cin=5, cout=19, k=3, stride=1, padding=1,
                                                     schedule={"np": 5}),
                                    L(5, 7, 7, 1), L(19, 7, 7, 1), (19, 5, 3, 3), residual=True),
    "conv3x3_s2_channel_vectors": Case(gen_conv2d, dict(cin=4, cout=17, k=3, stride=2, padding=1,
                                                        schedule={"np": 4}),
                                       L(4, 13, 21, 1), L(17, 7, 11, 1), (17, 4, 3, 3), residual=True),
    "conv3x3_s2_in_place": Case(gen_conv2d, dict(cin=3, cout=13, k=3, stride=2, padding=1,
                                                 schedule={"mr": 11, "nr": 2, "s2": 1}),
                                L(3, 17, 37, 1), L(13, 9, 19, 0), (13, 3, 3, 3)),
    "conv3x3_winograd4_nohalo": Case(gen_conv2d, dict(cin=3, cout=7, k=3, stride=1, padding=0, act="relu6",
                                                      schedule={"wino": 4, "mr": 4, "nr": 2}),
                                     L(3, 11, 30, 0), L(7, 9, 28, 0), (7, 3, 3, 3), residual=True),
    "conv3x3_winograd2": Case(gen_conv2d, dict(cin=5, cout=9, k=3, stride=1, padding=1,
                                               schedule={"wino": 2, "mr": 3, "nr": 1}),
                              L(5, 7, 33, 1), L(9, 7, 33, 2), (9, 5, 3, 3)),
    "conv1x1_s2": Case(gen_conv2d, dict(cin=6, cout=9, k=1, stride=2),
                       L(6, 15, 17, 1), L(9, 8, 9, 0), (9, 6, 1, 1)),
    "conv1x1_compact": Case(gen_conv2d, dict(cin=6, cout=11, k=1, stride=1,
                                             schedule={"mr": 3, "nr": 2, "compact": 1}),
                            L(6, 7, 7, 1), L(11, 7, 7, 1), (11, 6, 1, 1), residual=True),
    "conv1x1_compact_s2_nohalo": Case(gen_conv2d, dict(cin=5, cout=7, k=1, stride=2,
                                                       schedule={"mr": 4, "nr": 3, "compact": 1}),
                                      L(5, 13, 11, 0), L(7, 7, 6, 0), (7, 5, 1, 1)),
    "conv_maxpool_stem": Case(gen_conv_maxpool, dict(cin=3, cout=21, k=7, stride=2, padding=3, pool_k=3,
                                                     pool_stride=2, pool_padding=1, act="relu"),
                              L(3, 29, 35, 0), L(21, 8, 9, 1), (21, 3, 7, 7)),
    "conv_maxpool_stem_in_place": Case(gen_conv_maxpool, dict(cin=3, cout=21, k=7, stride=2, padding=3, pool_k=3,
                                                              pool_stride=2, pool_padding=1, act="relu"),
                                       L(3, 29, 35, 3), L(21, 8, 9, 1), (21, 3, 7, 7)),
    "conv_maxpool_s1_halo": Case(gen_conv_maxpool, dict(cin=2, cout=9, k=3, stride=1, padding=1, pool_k=2,
                                                        pool_stride=2, pool_padding=0, act="relu6",
                                                        schedule={"mv": 1, "np": 5}),
                                 L(2, 11, 19, 1), L(9, 5, 9, 0), (9, 2, 3, 3)),
    "dw_s1": Case(gen_depthwise, dict(channels=5, stride=1), L(5, 11, 35, 1), L(5, 11, 35, 1),
                  (5, 1, 3, 3), residual=True),
    "dw_s2": Case(gen_depthwise, dict(channels=5, stride=2), L(5, 11, 35, 1), L(5, 6, 18, 0),
                  (5, 1, 3, 3)),
    "dw_s2_nohalo": Case(gen_depthwise, dict(channels=4, stride=2), L(4, 8, 9, 0), L(4, 4, 5, 1),
                         (4, 1, 3, 3)),
    "pw_dw_s2": Case(gen_pw_dw, dict(expand_weight=np.ones((7, 5, 1, 1), np.float32),
                                     expand_bias=np.zeros(7, np.float32), expand_act="relu6", stride=2,
                                     act="relu6", schedule={"mr": 3, "nr": 2}),
                     L(5, 13, 37, 0), L(7, 7, 19, 1), (7, 1, 3, 3)),
    "pw_dw_s1_k5": Case(gen_pw_dw, dict(expand_weight=np.ones((6, 3, 1, 1), np.float32),
                                        expand_bias=np.zeros(6, np.float32), expand_act="none", k=5,
                                        padding=2, act="relu6"),
                        L(3, 9, 33, 1), L(6, 9, 33, 0), (6, 1, 5, 5)),
    "pw_dw_block_res": Case(gen_pw_dw, dict(expand_weight=np.ones((7, 5, 1, 1), np.float32),
                                            expand_bias=np.zeros(7, np.float32), expand_act="relu6",
                                            act="relu6", project=Project(np.ones((5, 7, 1, 1), np.float32),
                                                                         np.zeros(5, np.float32))),
                            L(5, 9, 37, 0), L(5, 9, 37, 1), (7, 1, 3, 3), residual=True),
    "maxpool_s2_nohalo": Case(gen_maxpool, dict(k=3, stride=2, padding=1), L(4, 13, 37, 0),
                              L(4, 7, 19, 0), None),
    "avgpool_s3": Case(gen_avgpool, dict(k=3, stride=3, padding=1), L(2, 10, 20, 0),
                       L(2, 4, 7, 0), None),
    "gap": Case(gen_global_avgpool, {}, L(6, 7, 7, 0), L(6, 1, 1, 0), None, residual=True),
    "linear_chw": Case(gen_linear, dict(in_features=30, out_features=11), L(3, 2, 5, 1),
                       L(11, 1, 1, 0), (11, 30)),
}


def test_kernels_are_memory_safe_under_asan(tmp_path):
    """All cases in one program (one build): ASan names the failing kernel in its report."""
    host = detect()
    parts, calls = [prelude_c(host), f"#define SLACK_N {SLACK}u\n", HARNESS], []
    for i, (label, case) in enumerate(sorted(CASES.items())):
        kern = case.gen(f"k{i}_{label}", in_layout=case.lin, out_layout=case.lout,
                        has_residual=case.residual, target=host, **case.kwargs)
        wsize = kern.pack(np.ones(case.weight, np.float32)).size if case.weight else 0
        parts.append(kern.code)
        calls.append(f"    check({kern.name}, {case.lin.size + SLACK}u, {case.lout.size + SLACK}u, "
                     f"{wsize}u, {case.weight[0] if case.weight else 0}u, {int(case.residual)});")
    src = tmp_path / "asan.c"
    src.write_text("\n".join(parts) + "\nint main(void) {\n" + "\n".join(calls) + "\n    return 0;\n}\n")
    exe = tmp_path / "asan"
    subprocess.run([find_compiler(), "-O1", "-g", "-fopenmp", "-std=gnu11", *host.toolchain.cflags,
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    "-fno-omit-frame-pointer", str(src), "-o", str(exe), "-lm"], check=True)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0", OMP_NUM_THREADS="2")
    proc = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
