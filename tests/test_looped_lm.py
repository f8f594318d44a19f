"""Issue 20's looped-model study: its three models are what they claim (equal parameters, equal depth), the
pydoc text source builds, and the report draws val loss against tokens and FLOPs from the runs' evaluations."""

import json

import pandas as pd
import pytest

from trmlab.data.corpus import iter_documents, pydoc_documents
from trmlab.recursion import count_parameters
from trmlab.studies import specs
from trmlab.studies.plots import val_curves, with_tokens_and_flops
from trmlab.studies.results import eval_curves
from trmlab.tasks import get_task
from trmlab.config import from_dict


def _model(exp_id: str):
    (study, exp), = specs.select([exp_id])[0]
    cfg = from_dict(specs.resolved_config(exp, study.base))
    cfg.model.vocab_size, cfg.model.seq_len = cfg.data.vocab_size, cfg.model.seq_len
    return cfg, get_task("lm").build_model(cfg)


@pytest.mark.parametrize("corpus, width", [("synthetic", 64), ("pydoc", 128)])
def test_looped_model_has_the_parameters_of_the_shallow_gpt_and_the_depth_of_the_deep_one(corpus, width):
    (c_loop, looped), (c_deep, deep), (c_same, same) = (_model(f"exp20_{corpus}_d{width}_{m}")
                                                        for m in ("looped", "gpt_deep", "gpt_same"))
    assert c_loop.data.source == corpus and c_loop.model.n_embd == c_deep.model.n_embd == width
    assert c_loop.model.effective_depth == c_deep.model.effective_depth == 3 * c_same.model.effective_depth
    p_loop, p_same, p_deep = (count_parameters(m)["params"] for m in (looped, same, deep))
    assert abs(p_loop - p_same) <= width + 1  # the looped model adds only its halting head
    core = sum(p.numel() for p in same.core.parameters())
    assert p_deep - p_same == pytest.approx(2 * core, rel=0.01)


def test_pydoc_source_is_pythons_documentation():
    docs = list(iter_documents("pydoc"))
    assert docs == pydoc_documents() and len(docs) > 50
    assert any("assignment statement" in d.lower() for d in docs)


def _fake_run(root, name, losses, batch=4, seq=8, flops=10.0):
    d = root / name
    d.mkdir(parents=True)
    lines = [{"step": 10 * (i + 1), "loss": v} for i, v in enumerate(losses)]
    lines += [{"step": 10 * (i + 1), "eval": {"val_loss": v, "refinement": "text"}} for i, v in enumerate(losses)]
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return {"run": name, "exp_id": name.split("-seed")[0], "train.batch_size": batch, "model.seq_len": seq,
            "train.grad_accum": 1, "flops_per_step": flops, "data.source": "synthetic", "model.n_embd": 64}


def test_val_curves_read_the_evaluations_and_plot_tokens_and_flops(tmp_path):
    rows = [_fake_run(tmp_path, "a", [3.0, 2.0]), _fake_run(tmp_path, "a-seed1", [3.2, 2.2]),
            _fake_run(tmp_path, "b", [4.0, 3.5], flops=30.0)]
    evals = eval_curves(tmp_path)
    assert sorted(evals.columns) == ["exp_id", "run", "step", "val_loss"]  # the text field is not a number
    assert evals[evals.run == "a-seed1"]["val_loss"].tolist() == [3.2, 2.2] and set(evals.exp_id) == {"a", "b"}
    axes = with_tokens_and_flops(evals, pd.DataFrame(rows)).set_index(["run", "step"])
    assert axes.loc[("a", 20), "tokens"] == 20 * 4 * 8 and axes.loc[("b", 20), "flops"] == 20 * 30.0
    (tmp_path / "plots").mkdir()
    fig = val_curves(evals, pd.DataFrame(rows), tmp_path / "plots")
    assert fig.path.is_file() and fig.path.read_bytes()[:4] == b"\x89PNG"
    one_eval = evals[evals.step == 10]
    assert val_curves(one_eval, pd.DataFrame(rows), tmp_path / "plots").skipped
