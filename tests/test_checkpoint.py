import os

import pytest
import torch

from patsparse.checkpoint import (check_state_dict, load_tensors, read_json, save_tensors,
                                  write_json)
from patsparse.errors import FormatError


def test_tensors_round_trip(tmp_path):
    t = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    save_tensors(tmp_path / "x.safetensors", t)
    back = load_tensors(tmp_path / "x.safetensors")
    assert torch.equal(back["a"], t["a"]) and torch.equal(back["b"], t["b"])
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_corrupt_and_missing_files_name_the_path(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(FormatError, match="bad.safetensors"):
        load_tensors(bad)
    with pytest.raises(FormatError, match="not found"):
        load_tensors(tmp_path / "nope.safetensors")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(FormatError, match="m.json"):
        read_json(tmp_path / "m.json")


def test_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "meta.json"
    write_json(path, {"epoch": 1})

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        write_json(path, {"epoch": Unserialisable()})
    assert read_json(path) == {"epoch": 1}


def test_state_dict_mismatch_lists_differences():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2))
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.Linear(8, 2))
    with pytest.raises(FormatError, match="shape mismatches"):
        check_state_dict(model, other.state_dict(), "ckpt.safetensors")
    check_state_dict(model, model.state_dict(), "ok")
