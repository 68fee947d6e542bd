"""benchmarks/arm_estimate.py: hot-loop extraction, llvm-mca parsing and the report, on a small model."""

import shutil

import pytest
import torch
from benchmarks import arm_estimate as est

ASM = """
f:
\tmov\tx1, 0
.L3:
\tfmla\tv0.4s, v1.4s, v2.4s
\tbne\t.L9
.L4:
\tldr\tq1, [x0], 16
\tfmla\tv0.4s, v1.4s, v2.s[0]
\tfmla\tv3.4s, v1.4s, v2.s[1]
\tfmul\tv4.4s, v1.4s, v2.4s
\tsubs\tx1, x1, 1
\tbne\t.L4
\tret
.L9:
\tfmla\tv5.4s, v1.4s, v2.4s
\tb\t.L3
"""


def test_hot_loop_is_the_self_loop_with_most_multiplies():
    block = est.hot_loop(ASM)
    assert [line.split()[0] for line in block] == ["ldr", "fmla", "fmla", "fmul", "subs", "bne"]
    assert est.hot_loop("f:\n\tfmla\tv0.4s, v1.4s, v2.4s\n\tret\n") is None
    # 3 FP ops on 2 pipes and 6 instructions on a 4-wide dispatch: 1.5 cycles; 1 load, 1 integer op
    assert est.port_cycles(block) == 1.5


@pytest.mark.skipif(not (shutil.which("llvm-mca") and shutil.which("aarch64-linux-gnu-gcc")),
                    reason="needs llvm-mca (Debian llvm) and aarch64-linux-gnu-gcc (gcc-aarch64-linux-gnu)")
def test_estimate_of_a_small_model(tmp_path):
    from patsparse.compiler.api import capture
    from patsparse.compiler.codegen.graph import generate_kernels
    from patsparse.compiler.codegen.plan import plan_graph
    from patsparse.models import get
    from patsparse.pruning.projection import project_model

    cycles = est.mca_cycles(est.hot_loop(ASM), tmp_path)
    assert 1.0 <= cycles < 20.0  # 3 multiplies and a load: a couple of cycles on an A76
    torch.manual_seed(0)
    m = get("convnet", num_classes=10, in_channels=1, variant="cifar").eval()
    project_model(m, rate=8.0)
    plan = plan_graph(capture(m, torch.zeros(1, 1, 28, 28)), target=est.NEON, threads=1)
    generate_kernels(plan)
    rates = est.layer_rates(plan, tmp_path)
    patterns = [s.index for s in plan.steps if s.kind == "pattern_conv"]
    assert patterns and all(0 < rates[i][0] <= rates[i][1] <= est.PEAK_FLOP_PER_CYCLE for i in patterns)
    text = est.report(plan, rates, 8.0, 8.0, [])
    assert "an ESTIMATE, not a measurement" in text and "189.6 ms" in text and "What it says:" in text
