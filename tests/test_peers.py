"""`trm bench --peers`: the alternation, the medians and ratios of its table, trmlab's own side for real, and the
one-line errors (the peers' code is not here, so their side is replaced by recorded timings)."""

import pytest

from trmlab.cli import main as cli_main
from trmlab.train import peers


def test_peers_alternate_sides_and_report_median_ratios(monkeypatch):
    calls, ms = [], {"official": [100, 300, 200], "trmlab": [50, 40, 60, 25, 20, 30]}
    monkeypatch.setattr(peers, "TRM_SHAPES", [(64, 2, 2, 8, True)])

    def fake(case):
        calls.append((case["side"], case["compile"]))
        return ms[case["side"]].pop(0)
    monkeypatch.setattr(peers, "_measure", fake)
    table = peers.compare("/src/trm", "", reps=3, steps=2, echo=lambda _: None)
    assert calls == [("official", False), ("trmlab", False), ("trmlab", True)] * 3
    # medians: official 200; trmlab eager median(50, 60, 20) = 50, compiled median(40, 25, 30) = 30
    assert "| 200 | 50 | 4.00 | 30 | 6.67 |" in table


def test_trmlab_sides_time_a_real_step():
    for side, shape in (("trmlab", [32, 1, 1, 2, True]), ("trmlab-gpt", [1, 1, 32, 16, 300, 2])):
        r = peers.run_peer_case({"side": side, "shape": shape, "src": "", "steps": 1})
        assert r["ms"] > 0


@pytest.mark.parametrize("argv, message", [
    (["bench", "--peers"], "needs --trm-src"),
    (["bench", "--peers", "--trm-src", "/nonexistent"], "no models/recursive_reasoning/trm.py there"),
    (["bench", "--peers", "--nanogpt-src", "."], "no model.py there"),
])
def test_peers_bad_input_is_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
