"""Bad input and failing disks end in one `trm: error:` line and exit code 2, never a traceback (issue 16)."""

import errno
import os
import signal

import numpy as np
import pytest

from trmlab.cli import main


def one_error_line(capsys, *argv) -> str:
    """Run `trm argv...` in this process; assert exit 2 and a single `trm: error:` line on stderr; return it."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("trm: error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------------ presets
def test_a_directory_given_as_the_preset(capsys, tmp_path):
    line = one_error_line(capsys, "info", tmp_path)
    assert str(tmp_path) in line and "directory" in line


@pytest.mark.parametrize("chain", [["self.yaml"], ["a.yaml", "b.yaml"], ["a.yaml", "b.yaml", "c.yaml"]])
def test_a_base_chain_that_comes_back_to_itself(capsys, tmp_path, chain):
    for name, base in zip(chain, chain[1:] + chain[:1]):
        (tmp_path / name).write_text(f"task: sudoku\nbase: {tmp_path / base}\n")
    line = one_error_line(capsys, "info", tmp_path / chain[0])
    assert "comes back to itself" in line and all(name in line for name in chain)


def test_a_base_chain_without_a_cycle_still_merges(capsys, tmp_path):
    (tmp_path / "a.yaml").write_text("base: sudoku\nmodel: {n_embd: 64}\n")
    (tmp_path / "b.yaml").write_text(f"base: {tmp_path / 'a.yaml'}\nmodel: {{n_layer: 1}}\n")
    assert main(["info", str(tmp_path / "b.yaml")]) == 0
    assert "n_layer 1 x" in capsys.readouterr().out


def test_a_preset_that_is_not_utf8(capsys, tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("task: sudoku\ndescription: caf\xe9\n".encode("latin-1"))
    line = one_error_line(capsys, "info", tmp_path / "latin1.yaml")
    assert "latin1.yaml" in line and "UTF-8" in line and "0xe9" in line


@pytest.mark.parametrize("text, where", [("task: [sudoku\n", "line 2"), ("task: sudoku\n  model: 3\n", "line 2"),
                                         ("model: {n_embd: 64\ntask: sudoku\n", "line 2")])
def test_malformed_yaml_names_the_line(capsys, tmp_path, text, where):
    (tmp_path / "bad.yaml").write_text(text)
    line = one_error_line(capsys, "info", tmp_path / "bad.yaml")
    assert "bad.yaml: invalid YAML" in line and where in line


def test_a_base_that_is_not_one_name(capsys, tmp_path):
    (tmp_path / "p.yaml").write_text("base: [sudoku, maze]\n")
    assert "base must be one preset" in one_error_line(capsys, "info", tmp_path / "p.yaml")


# ------------------------------------------------------------------------------------------ override keys
@pytest.mark.parametrize("key, first", [("n_trian", "data.n_train"), ("n_embed", "model.n_embd"),
                                        ("steps_", "train.steps"), ("trian.steps", "train?")])
def test_a_misspelt_key_suggests_the_closest_full_key_first(capsys, key, first):
    line = one_error_line(capsys, "info", "sudoku", f"{key}=5")
    assert line.split("did you mean ", 1)[1].startswith(first), line
