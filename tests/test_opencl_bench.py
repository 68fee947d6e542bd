"""benchmarks/opencl.py on the OpenCL device at hand: it checks both paths against PyTorch, and
on a CPU device (PoCL) reports no times."""

import pytest

pytest.importorskip("pyopencl", reason="pyopencl is not installed (pip install 'patsparse[opencl]')")

from benchmarks import opencl as bench  # noqa: E402
from patsparse.compiler.opencl.device import describe_device, list_devices  # noqa: E402
from patsparse.errors import UnsupportedError  # noqa: E402

try:
    DEVICE = describe_device(list_devices()[0])
except UnsupportedError as e:
    pytest.skip(f"no OpenCL platform on this machine: {e}", allow_module_level=True)


@pytest.mark.slow  # compiles for both targets and tunes: ~30 s on 2 cores
def test_benchmark_reports_agreement_and_times_only_on_a_gpu(tmp_path, capsys):
    out = tmp_path / "report.md"
    assert bench.main(["--model", "resnet8", "--width", "0.25", "--rate", "4", "--seconds", "1",
                       "--out", str(out)]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out.rstrip("\n") + "\n"
    rows = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in text.splitlines()
            if line.startswith("| OpenCL |") or line.startswith("| CPU (native C) |")}
    assert set(rows) == {"OpenCL", "CPU (native C)"} and max(rows.values()) <= 1e-4
    if DEVICE.is_gpu:
        assert "median ms per call" in text
    else:
        assert "not a GPU: no times are reported" in text and "ms" not in text
