import ctypes

import pytest

from patsparse.compiler import build
from patsparse.compiler.target import host
from patsparse.errors import BuildError

SRC = "float twice(float x) { return 2.0f * x; }\n"


def test_build_and_cache(tmp_path):
    lib = build.compile_c(SRC, name="t", cache_dir=tmp_path)
    f = ctypes.CDLL(str(lib)).twice
    f.restype, f.argtypes = ctypes.c_float, [ctypes.c_float]
    assert f(1.5) == 3.0
    mtime = lib.stat().st_mtime_ns
    assert build.compile_c(SRC, name="t", cache_dir=tmp_path) == lib
    assert lib.stat().st_mtime_ns == mtime


def test_failed_build_keeps_source(tmp_path):
    with pytest.raises(BuildError, match="generated source is kept") as e:
        build.compile_c("this is not C;", name="bad", cache_dir=tmp_path)
    assert list(tmp_path.rglob("bad.c")) and list(tmp_path.rglob("build.log"))
    assert "bad.c" in str(e.value)


def test_missing_compiler(monkeypatch, tmp_path):
    host.find_compiler.cache_clear()
    monkeypatch.setenv("CC", "definitely-not-a-compiler")
    monkeypatch.setenv("PATH", str(tmp_path))
    try:
        with pytest.raises(BuildError, match="no C compiler"):
            host.find_compiler()
    finally:
        host.find_compiler.cache_clear()
