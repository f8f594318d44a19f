"""`trm bench`: counted FLOPs follow the recursion schedule, activation memory is flat in T_recursion, the bare
loop computes what the engine computes, and the report lands in stdout and the doc. No timing is asserted."""

import pytest
import torch

from trmlab.train import benchmark as bench
from trmlab.cli import main as cli_main
from trmlab.config import load_config
from trmlab.recursion import recursion
from trmlab.train import device
from trmlab.train.trainer import Trainer

from conftest import TINY


def tiny_trainer(tmp_path, data_root, *extra):
    cfg = load_config("sudoku", TINY + ["train.supervision=summed", *extra])
    return Trainer(cfg, tmp_path / "_".join(extra or ["run"]).replace("=", ""), data_root=data_root, quiet=True)


def test_counted_flops_follow_the_recursion_schedule(tmp_path, data_root):
    """One more T_recursion adds exactly n_sup_train no-grad recursions' forward FLOPs; nothing else changes."""
    t1 = tiny_trainer(tmp_path, data_root, "model.T_recursion=1")
    t3 = tiny_trainer(tmp_path, data_root, "model.T_recursion=3")
    f1, a1 = bench.count_step(t1)
    f3, a3 = bench.count_step(t3)
    from torch.utils.flop_counter import FlopCounterMode
    x = t1.model.embed(t1._batch(0))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        recursion(t1.model.core, x, x, x, t1.cfg.model.n_loops)
    assert f3 - f1 == pytest.approx(2 * t1.cfg.model.n_sup_train * counter.get_total_flops(), rel=1e-9)
    assert a1 == a3 > 0  # the T-1 extra recursions keep no activations: memory is flat in T_recursion


def test_saved_activations_grow_with_n_loops(tmp_path, data_root):
    _, a1 = bench.count_step(tiny_trainer(tmp_path, data_root, "model.n_loops=1"))
    _, a3 = bench.count_step(tiny_trainer(tmp_path, data_root, "model.n_loops=3"))
    assert a3 > 1.5 * a1  # the grad-carrying recursion is backpropagated through all n_loops + 1 core calls


def test_bare_loop_matches_the_engine(tmp_path, data_root):
    t = tiny_trainer(tmp_path, data_root)
    o = bench.engine_overhead(t, reps=1)  # raises if the logits or the core-call count differ
    assert set(o) == {"engine_ms", "bare_ms", "overhead_pct"}
    assert torch.allclose(t.model.step(t._batch(0)).logits, bench.bare_core_logits(t.model, t._batch(0)), atol=1e-5)


def test_matmul_peak_is_measured():
    assert device.matmul_peak_flops(torch.device("cpu"), seconds=0.01, n=64) > 0


def test_bench_report_goes_to_stdout_and_the_doc(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.setattr(bench, "launch", lambda case, procs=1, timeout=0: bench.run_case(case))  # in-process
    monkeypatch.setattr(device, "matmul_peak_flops", lambda *a, **k: 1e9)
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.parent.mkdir()
    doc.write_text("# Benchmarks\n\n## latent (someone else's section)\n")
    args = ["bench", "sudoku", *TINY, "--steps", "1", "--warmup", "1", "--procs", "1", "--T", "1", "2", "--n",
            "--data-root", str(data_root), "--doc", str(doc)]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\n## latent (someone else's section)\n")  # appended, nothing replaced
    for s in ("Machine: ", "cores", f"torch {torch.__version__}", "Load average", "Command: `trm bench sudoku",
              "| eager, 1 process |", "MFU %", "memory vs T_recursion", "engine overhead"):
        assert s in out and s in text, s
    assert "saved activations spread 0.0 %" in out


def test_bench_unknown_preset_is_a_one_line_error(capsys):
    assert cli_main(["bench", "no-such-preset", "--doc", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown preset" in err


def test_a_failing_case_is_reported_not_raised(monkeypatch):
    monkeypatch.setattr(bench, "launch", lambda case, procs=1, timeout=0: {"error": "trm: error: no data offline"})
    b = bench.Bench(type("A", (), {"overrides": [], "warmup": 1, "steps": 1, "data_root": "data", "overhead": False,
                                   "compile": False, "bf16": False, "procs": [1], "T": [], "n": []})())
    b.preset("sudoku-paper")
    assert b.sections == [("sudoku-paper: skipped", "trm: error: no data offline")]


@pytest.mark.slow
def test_bench_end_to_end_in_fresh_processes(tmp_path, data_root):
    """Real subprocesses: 1 and 2 processes (torchrun), compile, and the T_recursion sweep."""
    doc = tmp_path / "benchmarks.md"
    rc = cli_main(["bench", "sudoku", *TINY, "--steps", "2", "--warmup", "1", "--compile", "--T", "1", "2", "--n",
                   "--data-root", str(data_root), "--doc", str(doc)])
    assert rc == 0
    text = doc.read_text()
    assert "| eager, 2 processes |" in text and "| compile, 1 process |" in text
    assert "error" not in text.lower() and "skipped" not in text
