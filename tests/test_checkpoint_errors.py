"""A damaged checkpoint is one clear line (`trm: error: ...`, exit 2), never a traceback or a paragraph, whichever
of its files is damaged and whichever command reads it."""

import shutil

import pytest

from trmlab.cli import main
from trmlab.config import load_config
from trmlab.errors import TrmError
from trmlab.train.checkpoint import latest_checkpoint, load_checkpoint
from trmlab.train.trainer import train

from conftest import TINY


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run with one checkpoint (so there is no older intact one to fall back to)."""
    root = tmp_path_factory.mktemp("ckpt")
    train(load_config("sudoku", TINY + ["train.steps=1"]), root / "run", data_root=root / "data", quiet=True)
    return root


def overwrite_head(f):
    """The same size, a broken header: only reading the file can tell."""
    data = bytearray(f.read_bytes())
    data[:16] = b"\xff" * 16
    f.write_bytes(bytes(data))


DAMAGE = {"garbage": lambda f: f.write_bytes(b"\x00garbage" * 10),
          "cut short": lambda f: f.write_bytes(f.read_bytes()[:-9]),
          "broken header": overwrite_head}
FILES = ["model.safetensors", "ema.safetensors", "optim.safetensors", "optim.json", "state.safetensors", "state.json"]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("name", FILES)
def test_a_damaged_checkpoint_file_is_a_one_line_error(trained, tmp_path, capsys, name, damage):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    DAMAGE[damage](latest_checkpoint(run) / name)
    with pytest.raises(TrmError) as e:
        load_checkpoint(run)
    assert "\n" not in str(e.value) and name in str(e.value)
    capsys.readouterr()
    # `trm eval` reads weights (+ EMA) and state.json; resuming reads every file
    argv = (["train", str(run), "--resume", "--quiet", "--data-root", str(trained / "data")]
            if name.startswith(("optim", "state.safetensors")) else
            ["eval", str(run), "--data-root", str(trained / "data")])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("trm: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
