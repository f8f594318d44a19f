"""Files and directories written whole or not at all."""

import json

import pytest
import torch

from trmlab import atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    atomic.write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(path) as tmp:
            tmp.write_text('{"v": 2, "half')
            raise RuntimeError("disk full")
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_finished_write_replaces_the_file(tmp_path):
    path = tmp_path / "x.safetensors"
    atomic.save_safetensors(path, {"a": torch.ones(2)})
    atomic.save_safetensors(path, {"a": torch.zeros(3)})
    from safetensors.torch import load_file
    assert load_file(path)["a"].tolist() == [0, 0, 0]
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


def test_the_temporary_keeps_a_suffix_when_asked(tmp_path):
    with atomic.atomic_file(tmp_path / "plot.png", suffix=".png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name.startswith(".plot.png.tmp-")
        tmp.write_bytes(b"png")
    assert (tmp_path / "plot.png").read_bytes() == b"png"


def test_a_directory_is_replaced_only_when_complete(tmp_path):
    out = tmp_path / "dataset"
    with atomic.atomic_directory(out) as tmp:
        (tmp / "a.npy").write_text("old")
    with pytest.raises(OSError):
        with atomic.atomic_directory(out) as tmp:
            (tmp / "a.npy").write_text("new, half")
            raise OSError(28, "No space left on device")
    assert (out / "a.npy").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]
    with atomic.atomic_directory(out) as tmp:
        (tmp / "b.npy").write_text("new")
    assert [p.name for p in out.iterdir()] == ["b.npy"]


def test_overwrite_recognises_the_temporary_name_as_a_run_file():
    from trmlab.train.run_dir import run_entry as _run_entry
    assert _run_entry(atomic.temporary_name(__import__("pathlib").Path("summary.json")).name)
