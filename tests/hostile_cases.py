"""Hostile and faulty inputs to the public API and CLI: files, models, inputs, environment, arguments.

Each ``case_*`` function is one case. test_hostile.py runs every case in its own process with
a timeout (``run``), so a crash (SIGSEGV, SIGBUS, abort) or a hang is a failed case and not the
end of the test run; a case returns when it got the clear error (or the right answer) it
expects. ``make_base(BASE_DIR)`` writes what the cases start from: a compiled model, a pruned
model and an ONNX file of one small network.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import patsparse as ps
from patsparse.checkpoint import sha256
from patsparse.cli import main as cli_main
from patsparse.compiler.package import load_compiled
from patsparse.compiler.runtime import aligned_empty
from patsparse.errors import BuildError, FormatError, InputError, UnsupportedError

SHAPE = (3, 8, 8)


class Tiny(nn.Module):
    """conv-ReLU, conv-ReLU6, max pool, linear: the ops whose fused epilogues matter."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = F.relu6(self.c2(x))
        return self.fc(F.max_pool2d(x, 2).flatten(1))


def make_base(base: Path) -> None:
    from patsparse.pruning.projection import project_model

    m = Tiny().eval()
    ps.compile(m, torch.zeros(1, *SHAPE), threads=1).save(base / "compiled")
    other = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 5)).eval()
    ps.compile(other, torch.zeros(1, *SHAPE), threads=1).save(base / "other")
    p = Tiny()
    project_model(p, 4.0, "phase2", layers=["c2"])
    p.patsparse_normalization = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.25]}
    ps.save(p, base / "pruned", input_shape=SHAPE)
    torch.onnx.export(m, torch.zeros(1, *SHAPE), str(base / "tiny.onnx"), dynamo=False, opset_version=17)


# -- helpers -----------------------------------------------------------------------------------
def x(n: int = 2) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).standard_normal((n, *SHAPE)).astype(np.float32))


def close(got, want) -> None:
    got, want = np.asarray(got), np.asarray(want)
    err = float(np.abs(got - want).max())
    assert err <= 1e-4 * max(1.0, float(np.abs(want).max())), f"max abs error {err}"


def reference(inp: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return Tiny().eval()(inp)


def expect(exc: type[Exception], fn, *args, match: str = "", **kw) -> Exception:
    try:
        fn(*args, **kw)
    except exc as e:
        assert match.lower() in str(e).lower(), f"{type(e).__name__} without {match!r}: {e}"
        return e
    raise AssertionError(f"expected {getattr(exc, '__name__', exc)}, nothing was raised")


def copy(base: Path, tmp: Path, what: str = "compiled") -> Path:
    return Path(shutil.copytree(base / what, tmp / what))


def rehash(d: Path, name: str) -> None:
    """Update the manifest's hash of ``name``: what someone who edits both files does."""
    man = json.loads((d / "manifest.json").read_text())
    man["files"][name] = sha256((d / name).read_bytes())
    (d / "manifest.json").write_text(json.dumps(man))


def edit_json(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def edit_graph(d: Path, change) -> None:
    edit_json(d / "graph.json", change)
    rehash(d, "graph.json")


def marker_library(tmp: Path, marker: Path) -> Path:
    """A shared library that creates ``marker`` when it is loaded (dlopen runs constructors)."""
    src = tmp / "evil.c"
    src.write_text('#include <fcntl.h>\n#include <unistd.h>\n__attribute__((constructor)) static void f(void) '
                   f'{{ close(open("{marker}", O_CREAT | O_WRONLY, 0644)); }}\n')
    lib = tmp / "evil.so"
    subprocess.run(["gcc", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    return lib


class Payload:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"weight": Payload(marker)}))


def snapshot(d: Path) -> dict:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(d.rglob("*"))}


# -- compiled-model directories -------------------------------------------------------------------
def case_manifest_output_shape_edited(base, tmp):
    d = copy(base, tmp)
    edit_json(d / "manifest.json", lambda m: m.update(output_shape=[500]))
    expect(FormatError, ps.load, d, match="output_shape")
    expect(FormatError, load_compiled, d, trust_native_code=True, match="output_shape")


def case_manifest_input_shape_edited(base, tmp):
    d = copy(base, tmp)
    edit_json(d / "manifest.json", lambda m: m.update(input_shape=[3, 64, 64]))
    expect(FormatError, ps.load, d, match="input_shape")


def case_manifest_workspace_shrunk(base, tmp):
    d = copy(base, tmp)
    edit_json(d / "manifest.json", lambda m: m.update(workspace_floats=16))
    close(ps.load(d)(x()), reference(x()))  # the regenerated size is what the code gets
    expect(FormatError, load_compiled, d, trust_native_code=True, match="does not belong")


def case_manifest_threads_absurd(base, tmp):
    d = copy(base, tmp)
    edit_json(d / "manifest.json", lambda m: m.update(threads=10 ** 9))
    expect(FormatError, ps.load, d, match="threads")


def case_manifest_not_json(base, tmp):
    d = copy(base, tmp)
    (d / "manifest.json").write_bytes(b"\x00\xff{{{")
    expect(FormatError, ps.load, d, match="manifest")


def case_manifest_future_version(base, tmp):
    d = copy(base, tmp)
    edit_json(d / "manifest.json", lambda m: m.update(format_version=99))
    expect(FormatError, ps.load, d, match="format 99")


def case_manifest_files_not_a_map(base, tmp):
    d = copy(base, tmp)
    edit_json(d / "manifest.json", lambda m: m.update(files=["graph.json"]))
    expect(FormatError, ps.load, d, match="files")


def case_manifest_hash_entry_removed(base, tmp):
    d = copy(base, tmp)
    edit_graph(d, lambda g: g["nodes"][0]["attrs"].update(padding=2))
    edit_json(d / "manifest.json", lambda m: m["files"].pop("graph.json"))
    expect(FormatError, ps.load, d, match="no hash given")


def case_manifest_schedule_injected(base, tmp):
    d = copy(base, tmp)
    edit_json(d / "manifest.json", lambda m: m["layers"][1].update(schedule={"layout": "rows); system(\"id\"); ("}))
    expect(FormatError, ps.load, d, match="schedule")


def case_library_truncated(base, tmp):
    d = copy(base, tmp)
    lib = d / "libmodel.so"
    lib.write_bytes(lib.read_bytes()[:4096])
    close(ps.load(d)(x()), reference(x()))  # never loaded unless trusted
    expect(FormatError, load_compiled, d, trust_native_code=True, match="libmodel.so")


def case_library_of_another_model(base, tmp):
    d = copy(base, tmp)
    shutil.copy(base / "other" / "libmodel.so", d / "libmodel.so")
    close(ps.load(d)(x()), reference(x()))
    expect(FormatError, load_compiled, d, trust_native_code=True, match="libmodel.so")
    rehash(d, "libmodel.so")  # hashes edited too: the library's own sizes give it away
    expect(FormatError, load_compiled, d, trust_native_code=True, match="does not belong")


def case_library_replaced_by_code_is_never_loaded(base, tmp):
    d = copy(base, tmp)
    marker = tmp / "library-ran"
    shutil.copy(marker_library(tmp, marker), d / "libmodel.so")
    rehash(d, "libmodel.so")
    close(ps.load(d)(x()), reference(x()))
    assert not marker.exists(), "the library inside the directory was loaded"


def case_source_replaced_by_code_is_never_built(base, tmp):
    d = copy(base, tmp)
    marker = tmp / "source-ran"
    (d / "model.c").write_text(f'#error never compile me\n/* {marker} */\n')
    rehash(d, "model.c")
    close(ps.load(d)(x()), reference(x()))
    close(load_compiled(d, trust_native_code=True)(x()), reference(x()))  # trust means the library


def case_graph_tensors_truncated(base, tmp):
    d = copy(base, tmp)
    f = d / "graph.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    expect(FormatError, ps.load, d, match="graph.safetensors")


def case_graph_tensors_bit_flipped(base, tmp):
    d = copy(base, tmp)
    f = d / "graph.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0x40
    f.write_bytes(bytes(raw))
    expect(FormatError, ps.load, d, match="graph.safetensors")


def case_graph_tensors_truncated_and_rehashed(base, tmp):
    d = copy(base, tmp)
    f = d / "graph.safetensors"
    f.write_bytes(f.read_bytes()[:-64])
    rehash(d, "graph.safetensors")
    expect(FormatError, ps.load, d, match="graph.safetensors")


def case_graph_tensors_are_a_pickle(base, tmp):
    d = copy(base, tmp)
    marker = tmp / "unpickled"
    write_pickle(d / "graph.safetensors", marker)
    rehash(d, "graph.safetensors")
    expect(FormatError, ps.load, d, match="graph.safetensors")
    assert not marker.exists(), "a pickle was executed"


def case_graph_json_garbage(base, tmp):
    d = copy(base, tmp)
    (d / "graph.json").write_text("{\"nodes\": [")
    rehash(d, "graph.json")
    expect(FormatError, ps.load, d, match="graph.json")


def case_graph_kernel_size_edited(base, tmp):
    d = copy(base, tmp)
    edit_graph(d, lambda g: g["nodes"][0]["attrs"].update(k=5))
    expect(FormatError, ps.load, d, match="kernel size")


def case_graph_attribute_injects_c(base, tmp):
    d = copy(base, tmp)
    edit_graph(d, lambda g: g["nodes"][0]["attrs"].update(stride="1); system(\"id\"); (1"))
    expect(FormatError, ps.load, d, match="stride")


def case_graph_shape_edited(base, tmp):
    d = copy(base, tmp)
    edit_graph(d, lambda g: g["nodes"][0].update(shape=[8, 80, 80]))
    expect(FormatError, ps.load, d, match="shape")


def case_graph_input_shape_huge(base, tmp):
    d = copy(base, tmp)
    edit_graph(d, lambda g: g.update(input_shape=[3, 1 << 20, 1 << 20]))
    expect(FormatError, ps.load, d, match="input_shape")


def case_graph_residual_from_the_future(base, tmp):
    d = copy(base, tmp)
    edit_graph(d, lambda g: g["nodes"][0].update(residual=g["nodes"][1]["name"]))
    expect(FormatError, ps.load, d, match="residual")


def case_graph_duplicate_node_name(base, tmp):
    d = copy(base, tmp)
    edit_graph(d, lambda g: g["nodes"][1].update(name=g["nodes"][0]["name"]))
    expect(FormatError, ps.load, d, match="twice")


def case_graph_node_name_breaks_out_of_a_comment(base, tmp):
    d = copy(base, tmp)
    marker = tmp / "name-ran"
    evil = f'*/ __attribute__((constructor)) void f(void) {{ system("touch {marker}"); }} /*'

    def rename(g):
        old = g["nodes"][0]["name"]
        g["nodes"][0]["name"] = evil
        g["nodes"][1]["inputs"] = [evil if i == old else i for i in g["nodes"][1]["inputs"]]

    edit_graph(d, rename)
    edit_json(d / "manifest.json", lambda m: m["layers"][0].update(name=evil))
    cm = ps.load(d)
    close(cm(x()), reference(x()))
    assert not marker.exists() and evil not in cm.source


def case_graph_op_unknown(base, tmp):
    d = copy(base, tmp)
    edit_graph(d, lambda g: g["nodes"][0].update(op="system"))
    expect(FormatError, ps.load, d, match="op")


def case_directory_read_only_is_never_written(base, tmp):
    d = copy(base, tmp)
    (d / "libmodel.so").unlink()
    before = snapshot(d)
    for p in [d, *d.iterdir()]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    close(ps.load(d)(x()), reference(x()))
    assert snapshot(d) == before and not any(p.name.startswith(".") for p in tmp.iterdir())


def case_directory_missing(base, tmp):
    expect(FormatError, ps.load, tmp / "nothing", match="not a saved patsparse model")


# -- pruned-model directories ---------------------------------------------------------------------
def case_pruned_weights_are_a_pickle(base, tmp):
    d = copy(base, tmp, "pruned")
    marker = tmp / "unpickled"
    torch.save({"c1.weight": Payload(marker)}, d / "model.safetensors")
    expect(FormatError, ps.load, d, model=Tiny(), match="model.safetensors")
    assert not marker.exists(), "a pickle was executed"


def case_pruned_weights_truncated(base, tmp):
    d = copy(base, tmp, "pruned")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:50])
    expect(FormatError, ps.load, d, model=Tiny(), match="model.safetensors")


def case_pruned_weight_bit_flipped(base, tmp):
    d = copy(base, tmp, "pruned")
    f = d / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-7] ^= 0x01
    f.write_bytes(bytes(raw))
    expect(FormatError, ps.load, d, model=Tiny(), match="hash")


def case_pruned_safetensors_header_claims_exabytes(base, tmp):
    d = copy(base, tmp, "pruned")
    (d / "model.safetensors").write_bytes((1 << 60).to_bytes(8, "little") + b"{}")
    meta = json.loads((d / "model.json").read_text())
    meta.pop("weights_sha256")  # as an older file would be: the parser itself must refuse it
    (d / "model.json").write_text(json.dumps(meta))
    expect(FormatError, ps.load, d, model=Tiny(), match="model.safetensors")


def case_pruned_spec_pattern_id_out_of_range(base, tmp):
    d = copy(base, tmp, "pruned")

    def bump(meta):
        kernels = meta["spec"]["layers"]["c2"]["kernels"]
        row = kernels[0] if isinstance(kernels[0], list) else kernels
        row[0] = 10 ** 6

    edit_json(d / "model.json", bump)
    expect(FormatError, ps.load, d, model=Tiny(), match="c2")


def case_pruned_normalization_malformed(base, tmp):
    d = copy(base, tmp, "pruned")
    edit_json(d / "model.json", lambda m: m.update(std=[0.2, 0.0, 0.25]))
    expect(FormatError, ps.load, d, model=Tiny(), match="normalisation")


def case_pruned_metadata_not_json(base, tmp):
    d = copy(base, tmp, "pruned")
    (d / "model.json").write_text("nope")
    expect(FormatError, ps.load, d, model=Tiny(), match="not valid JSON")


# -- ONNX files -------------------------------------------------------------------------------------
def _onnx(base: Path):
    import onnx

    return onnx.load(str(base / "tiny.onnx"))


def case_onnx_two_nodes_of_one_name(base, tmp):
    import onnx

    m = _onnx(base)
    for n in m.graph.node:
        n.name = "same"
    onnx.save(m, str(tmp / "dup.onnx"))
    inp = x().numpy()  # (onnxruntime refuses such a file; the exported network is Tiny)
    close(ps.compile(str(tmp / "dup.onnx"), threads=1)(inp), reference(torch.from_numpy(inp)))


def case_onnx_node_named_input(base, tmp):
    import onnx

    m = _onnx(base)
    m.graph.node[0].name = "input"
    onnx.save(m, str(tmp / "input.onnx"))
    inp = x().numpy()
    close(ps.compile(str(tmp / "input.onnx"), threads=1)(inp), reference(torch.from_numpy(inp)))


def case_onnx_garbage_file(base, tmp):
    (tmp / "junk.onnx").write_bytes(os.urandom(300))
    expect(FormatError, ps.compile, str(tmp / "junk.onnx"), match="junk.onnx")


def case_onnx_stride_zero(base, tmp):
    import onnx

    m = _onnx(base)
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    for a in conv.attribute:
        if a.name == "strides":
            a.ints[:] = [0, 0]
    del m.graph.value_info[:]
    onnx.save(m, str(tmp / "s0.onnx"))
    expect((UnsupportedError, FormatError), ps.compile, str(tmp / "s0.onnx"), match="stride")


def case_onnx_reads_an_undefined_tensor(base, tmp):
    import onnx

    m = _onnx(base)
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    relu.input[0] = "nowhere"
    onnx.save(m, str(tmp / "undef.onnx"))
    expect(FormatError, ps.compile, str(tmp / "undef.onnx"), match="nowhere")


def case_onnx_wrong_shape_annotation(base, tmp):
    import onnx

    m = onnx.shape_inference.infer_shapes(_onnx(base))
    vi = m.graph.value_info[0]
    vi.type.tensor_type.shape.dim[2].dim_value = 4  # H halved
    onnx.save(m, str(tmp / "lies.onnx"))
    expect(FormatError, ps.compile, str(tmp / "lies.onnx"), match="the file says its output is")


# -- PyTorch models ---------------------------------------------------------------------------------
def case_module_named_input(base, tmp):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.input = nn.Conv2d(3, 4, 3, padding=1)
            self.out = nn.Conv2d(4, 2, 1)

        def forward(self, inp):
            return self.out(torch.relu(self.input(inp)))

    m = Net().eval()
    with torch.no_grad():
        close(ps.compile(m, torch.zeros(1, *SHAPE), threads=1)(x()), m(x()))


def case_unsupported_op_is_named(base, tmp):
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Mish()).eval()
    expect(UnsupportedError, ps.compile, m, torch.zeros(1, *SHAPE), match="Mish", strict=True)


def case_non_finite_weights_are_refused(base, tmp):
    m = Tiny().eval()
    with torch.no_grad():
        m.c2.weight[0, 0, 0, 0] = float("nan")
    expect(InputError, ps.compile, m, torch.zeros(1, *SHAPE), match="c2")


# -- inputs ---------------------------------------------------------------------------------------------
def case_nan_inf_and_negative_zero_as_torch(base, tmp):
    """ReLU and ReLU6 fused into 1x1 convs that copy their input: the exact values must pass."""
    def copy_conv():
        c = nn.Conv2d(3, 3, 1, bias=False)
        c.weight.data = torch.eye(3).reshape(3, 3, 1, 1)
        return c

    inp = x()
    inp[0, 0, 0, :5] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 7.0])
    for act in (nn.ReLU(), nn.ReLU6()):
        m = nn.Sequential(copy_conv(), act).eval()
        with torch.no_grad():
            got, want = ps.compile(m, torch.zeros(1, *SHAPE), threads=1)(inp).numpy(), m(inp).numpy()
        np.testing.assert_array_equal(got, want)  # NaN where NaN, equal values elsewhere


def case_nan_through_max_pools_as_torch(base, tmp):
    """A NaN inside a max-pool window gives NaN, standalone and fused after a conv (the stem)."""
    inp = x()
    inp[0, 1, 2, 3] = float("nan")
    inp[0, 0, 5, 5] = float("inf")
    for m in (nn.Sequential(nn.Conv2d(3, 4, 1), nn.MaxPool2d(3, 2, 1)),
              nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1)),
              nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(3, 4, 1))):
        m = m.eval()
        with torch.no_grad():
            got, want = ps.compile(m, torch.zeros(1, *SHAPE), threads=1)(inp).numpy(), m(inp).numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(want), rtol=1e-4, atol=1e-5)


def case_nan_input_reaches_the_output(base, tmp):
    inp = x()
    inp[1, 2, 3, 4] = float("nan")
    cm = ps.load(base / "compiled")
    np.testing.assert_array_equal(np.isnan(cm(inp).numpy()), np.isnan(reference(inp).numpy()))


def case_object_array_input(base, tmp):
    cm = ps.load(base / "compiled")
    arr = np.empty((1, *SHAPE), dtype=object)
    arr[...] = "7"
    expect(InputError, cm, arr, match="dtype object")


def case_string_and_complex_inputs(base, tmp):
    cm = ps.load(base / "compiled")
    expect(InputError, cm, np.full((1, *SHAPE), "1.0"), match="dtype")
    expect(InputError, cm, torch.zeros(1, *SHAPE, dtype=torch.complex64), match="complex")
    expect(InputError, cm, [[0.0]], match="torch.Tensor or numpy array")


def case_wrong_shapes_and_empty_batch(base, tmp):
    cm = ps.load(base / "compiled")
    expect(InputError, cm, torch.zeros(1, 3, 9, 8), match="compiled for")
    expect(InputError, cm, torch.zeros(*SHAPE), match="compiled for")
    assert cm(torch.zeros(0, *SHAPE)).shape == (0, 5)
    inp = x(3).double().permute(0, 1, 3, 2)  # float64, not contiguous
    close(cm(inp), reference(inp.float()))


def case_cli_npy_with_objects_is_not_unpickled(base, tmp):
    marker = tmp / "unpickled"
    arr = np.empty((1,), dtype=object)
    arr[0] = Payload(marker)
    np.save(tmp / "x.npy", arr, allow_pickle=True)
    assert cli_main(["run", str(base / "compiled"), "--input", str(tmp / "x.npy")]) == 1
    assert not marker.exists()


# -- environment ------------------------------------------------------------------------------------------
def case_no_compiler_cold_cache(base, tmp):
    """CC points nowhere and PATH has no gcc: a clear BuildError that names the way out; the
    trusted library still works."""
    os.environ["PATSPARSE_CACHE"] = str(tmp / "cold")
    os.environ["CC"] = str(tmp / "no-such-cc")
    os.environ["PATH"] = str(tmp)
    e = expect(BuildError, ps.load, base / "compiled", match="trust_native_code")
    assert "no C compiler" in str(e)
    close(load_compiled(base / "compiled", trust_native_code=True)(x()), reference(x()))


def case_cache_is_a_file(base, tmp):
    (tmp / "file").write_text("")
    os.environ["PATSPARSE_CACHE"] = str(tmp / "file" / "cache")
    expect(BuildError, ps.load, base / "compiled", match="cache")


def case_cache_holds_a_different_library(base, tmp):
    """A build-cache entry is trusted (it is the user's own), but one from another model still
    cannot make a call write out of bounds: the runtime checks the library's sizes."""
    os.environ["PATSPARSE_CACHE"] = str(tmp / "cache")
    built = subprocess.run([sys.executable, "-c", f"import patsparse as ps; print(ps.load({str(base / 'compiled')!r}).lib_path)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    shutil.copy(base / "other" / "libmodel.so", built)  # not loaded in this process: no SIGBUS
    expect(FormatError, ps.load, base / "compiled", match="does not belong")


def case_no_pthread_keys_left(base, tmp):
    """A process that has loaded about a thousand models has no pthread keys left (ctypes never
    unloads a library, and the key limit is per process): a model loaded then still computes,
    in a team and from threads that start and exit. A library that used the key variable a
    failed creation left behind (0, the interpreter's own) wrote into Python's thread state."""
    libc = ctypes.CDLL(None)
    key = ctypes.c_uint()
    while libc.pthread_key_create(ctypes.byref(key), None) == 0:
        pass
    m = load_compiled(base / "compiled", threads=2)
    want = reference(x())
    close(m(x()), want)
    got = []
    workers = [threading.Thread(target=lambda: got.append(m(x()))) for _ in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert len(got) == 4
    for y in got:
        close(y, want)


def case_library_unloaded_while_a_thread_that_used_it_lives(base, tmp):
    """A C program dlcloses a model library while a thread that called it still runs: that
    thread's exit must not run code of the unloaded library (a thread-exit destructor would)."""
    m = load_compiled(base / "compiled")
    shutil.copy(m.lib_path, tmp / "libmodel.so")  # an instance of its own, which dlclose unloads
    lib = ctypes.CDLL(str(tmp / "libmodel.so"))
    lib.ps_forward.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                               ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    inp = x().numpy()
    out = np.empty((len(inp), *m.output_shape), np.float32)
    ws = aligned_empty(m.manifest["workspace_floats"])
    called, release = threading.Event(), threading.Event()

    def worker():
        lib.ps_forward(inp.ctypes.data, out.ctypes.data, len(inp), ws.ctypes.data, m._blob.ctypes.data,
                       m.threads, None)
        called.set()
        release.wait()

    t = threading.Thread(target=worker)
    t.start()
    called.wait()
    close(out, reference(x()))
    libc = ctypes.CDLL(None)
    libc.dlclose.argtypes = [ctypes.c_void_p]
    assert libc.dlclose(lib._handle) == 0
    assert str(tmp / "libmodel.so") not in Path("/proc/self/maps").read_text()
    release.set()
    t.join()


# -- arguments ---------------------------------------------------------------------------------------------
def case_save_over_a_file(base, tmp):
    (tmp / "f").write_text("mine")
    expect(InputError, ps.save, Tiny(), tmp / "f", match="not a directory")
    assert (tmp / "f").read_text() == "mine"


def case_save_over_a_foreign_directory(base, tmp):
    (tmp / "home").mkdir()
    (tmp / "home" / "thesis.tex").write_text("years of work")
    expect(InputError, ps.save, Tiny(), tmp / "home", match="thesis.tex")
    expect(InputError, ps.load(base / "compiled").save, tmp / "home", match="thesis.tex")
    assert (tmp / "home" / "thesis.tex").read_text() == "years of work"


def case_load_with_bad_threads(base, tmp):
    expect(InputError, load_compiled, base / "compiled", threads=0, match="threads")
    expect(InputError, load_compiled, base / "compiled", threads="2", match="threads")


def case_compile_with_a_3d_example(base, tmp):
    expect(InputError, ps.compile, Tiny().eval(), torch.zeros(*SHAPE), match="4-D")


def case_cli_normalize_without_normalisation(base, tmp):
    np.save(tmp / "x.npy", x().numpy())
    assert cli_main(["run", str(base / "compiled"), "--input", str(tmp / "x.npy"), "--normalize"]) == 1


def case_normalisation_travels_to_the_compiled_model(base, tmp):
    p = ps.load(base / "pruned", model=Tiny())
    cm = ps.compile(p, torch.zeros(1, *SHAPE), threads=1)
    d = cm.save(tmp / "c")
    norm = ps.load(d).manifest["normalization"]
    assert norm == {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.25]}
    raw = np.random.default_rng(2).random((2, *SHAPE)).astype(np.float32)
    np.save(tmp / "x.npy", raw)
    assert cli_main(["run", str(d), "--input", str(tmp / "x.npy"), "--output", str(tmp / "y.npy"),
                     "--normalize"]) == 0
    mean, std = (np.float32(norm[k])[:, None, None] for k in ("mean", "std"))
    with torch.no_grad():
        close(np.load(tmp / "y.npy"), p(torch.from_numpy((raw - mean) / std)))


def run(base: str, name: str, tmp: str, log: str) -> None:
    """Run case ``name`` (or ``make_base``) with its output in ``log``: the body of a child
    process, which exits 0 when the case passes, 1 on an exception, and dies on a crash."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if name == "make_base":
        make_base(Path(base))
    else:
        globals()[name](Path(base), Path(tmp))


CASES = sorted(k for k in dict(globals()) if k.startswith("case_"))
