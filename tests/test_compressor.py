"""Phase 1 (seed 001): DimensionCompressor, metrics, PCA baseline, hidden-state extraction, the compress CLI."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trmlab.cli import compress
from trmlab.data.hidden_states import (
    HiddenStateCache, extract_hidden_states, generate_cot_corpus, iter_texts, read_manifest)
from trmlab.llm.sources import HFHiddenStateSource, save_tiny_random_model
from trmlab.errors import TrmError
from trmlab.models.compressor import (
    DimensionCompressor,
    ReconstructionMetrics,
    load_compressor,
    pca_reconstruction,
    reconstruction_metrics,
    save_compressor,
)

TINY = ["--model", "tiny-random", "--no_wandb", "--num_samples", "24", "--max_seq_length", "24", "--batch_size", "4",
        "--num_epochs", "2", "--text_source", "synthetic", "--dtype", "fp32", "--no_progress", "--shard_size", "8",
        "--save_every", "5", "--eval_every", "5", "--log_every", "5", "--d_compressed", "16", "--threads", "1"]


def _args(*argv):
    return compress.build_parser().parse_args(list(argv))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------- the module


@pytest.mark.parametrize("d, expected", [(64, 196_608), (128, 393_216), (256, 786_432), (512, 1_572_864),
                                         (1024, 3_145_728)])
def test_param_count_matches_seed_table(d, expected):
    assert DimensionCompressor(3072, d).num_parameters() == d * 3072 == expected
    assert DimensionCompressor(3072, d, bias=True).num_parameters() == d * 3072 + d + 3072


def test_weight_tying_decoder_uses_the_encoder_tensor():
    torch.manual_seed(0)
    m = DimensionCompressor(12, 5)
    assert list(m.state_dict()) == ["weight"]
    x = torch.randn(3, 7, 12)
    assert torch.allclose(m.compress(x), x @ m.weight.t())
    z = torch.randn(3, 7, 5)
    assert torch.allclose(m.decompress(z), z @ m.weight)
    # changing the one tensor changes both directions
    with torch.no_grad():
        m.weight.mul_(2.0)
    assert torch.allclose(m.compress(x), x @ m.weight.t())
    assert torch.allclose(m.decompress(z), z @ m.weight)
    # a decoder-only loss still trains the shared weight
    m.decompress(z).sum().backward()
    assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0
    assert m(x).shape == x.shape
    with pytest.raises(TrmError):
        m.compress(torch.randn(2, 11))


def test_metrics_on_known_inputs():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 8)
    same = reconstruction_metrics(x, x.clone())
    assert same["mse"] == pytest.approx(0.0, abs=1e-12)
    assert same["cosine_similarity"] == pytest.approx(1.0, abs=1e-9)
    assert same["relative_error"] == pytest.approx(0.0, abs=1e-9)
    assert same["variance_ratio"] == pytest.approx(1.0, abs=1e-9)
    double = reconstruction_metrics(x, 2 * x)
    assert double["cosine_similarity"] == pytest.approx(1.0, abs=1e-9)
    assert double["relative_error"] == pytest.approx(1.0, abs=1e-9)
    assert double["variance_ratio"] == pytest.approx(4.0, rel=1e-9)
    assert double["mse"] == pytest.approx(float((x ** 2).mean()), rel=1e-6)
    neg = reconstruction_metrics(x, -x)
    assert neg["cosine_similarity"] == pytest.approx(-1.0, abs=1e-9)
    assert neg["relative_error"] == pytest.approx(2.0, abs=1e-9)
    const = reconstruction_metrics(x, x.reshape(-1, 8).mean(0).expand_as(x))
    assert const["variance_ratio"] == pytest.approx(0.0, abs=1e-9)
    # padding positions are ignored, whatever they hold
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, :3] = True
    garbage = x.clone()
    garbage[:, 3:] = 1e6
    masked = reconstruction_metrics(x, garbage, mask)
    assert masked["relative_error"] == pytest.approx(0.0, abs=1e-9)
    assert masked["num_tokens"] == 12


def test_streaming_metrics_equal_one_shot_and_sum_across_shards():
    torch.manual_seed(1)
    x, xh = torch.randn(6, 5, 10), torch.randn(6, 5, 10)
    mask = torch.rand(6, 5) > 0.3
    a, b = ReconstructionMetrics(10), ReconstructionMetrics(10)
    a.update(x[:3], xh[:3], mask[:3])
    b.update(x[3:], xh[3:], mask[3:])
    merged = ReconstructionMetrics.from_state(a.state() + b.state(), 10).compute()
    one = reconstruction_metrics(x, xh, mask)
    for k in ("mse", "cosine_similarity", "relative_error", "variance_ratio"):
        assert merged[k] == pytest.approx(one[k], rel=1e-9)


def _anisotropic(n, d, seed, scales=None):
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(123)))
    scales = scales if scales is not None else torch.logspace(0.5, -1.5, d)
    return (torch.randn(n, d, generator=g) * scales) @ basis.t()


def test_pca_full_rank_is_exact_and_low_rank_matches_the_spectrum():
    train, test = _anisotropic(4000, 16, 0), _anisotropic(500, 16, 1)
    full = pca_reconstruction(train, test, 16)
    assert full["relative_error"] < 1e-6 and full["cosine_similarity"] > 1 - 1e-9
    low = pca_reconstruction(train, test, 4)
    # dropped variance fraction ~ relative_error**2 on held-out data from the same distribution
    assert low["relative_error"] ** 2 == pytest.approx(1 - low["explained_variance_ratio"], abs=0.03)
    assert low["params"] == 4 * 16
    assert pca_reconstruction(train, test, 8)["mse"] < low["mse"]


def _train(model, x, steps, lr):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = ((model(x) - x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_compressor_at_full_width_reaches_near_perfect_reconstruction():
    torch.manual_seed(0)
    x = _anisotropic(1024, 16, 2, scales=torch.linspace(2.0, 0.5, 16))
    model = DimensionCompressor(16, 16, init="normal")  # not a projection to start with
    before = reconstruction_metrics(x, model(x).detach())["relative_error"]
    assert before > 0.3
    _train(model, x, 400, 1e-2)
    m = reconstruction_metrics(x, model(x).detach())
    assert m["cosine_similarity"] > 0.999 and m["relative_error"] < 0.03


def test_trained_compressor_is_never_better_than_pca_on_held_out_data():
    torch.manual_seed(0)
    train, test = _anisotropic(2048, 24, 3), _anisotropic(1024, 24, 4)
    model = _train(DimensionCompressor(24, 6), train, 600, 1e-2)
    comp = reconstruction_metrics(test, model(test).detach())
    pca = pca_reconstruction(train, test, 6)
    assert comp["mse"] >= pca["mse"] * (1 - 0.02)          # PCA is the optimal linear map, up to sampling noise
    assert comp["mse"] <= pca["mse"] * 1.25                  # ...and training does get close to it
    assert comp["cosine_similarity"] <= pca["cosine_similarity"] + 0.01


def test_centring_lets_the_tied_compressor_match_pca_on_data_far_from_the_origin():
    """PCA centres the data; a tied map through the origin cannot, and pays for the mean in every direction it
    drops. With the training mean subtracted (``center``) training reaches PCA's held-out MSE within 2%."""
    torch.manual_seed(0)
    offset = torch.linspace(3.0, -2.0, 24)
    train, test = _anisotropic(2048, 24, 3) + offset, _anisotropic(1024, 24, 4) + offset
    pca = pca_reconstruction(train, test, 6)["mse"]
    centred = DimensionCompressor(24, 6, center=True)
    with torch.no_grad():
        centred.mean.copy_(train.mean(0))
    centred = _train(centred, train, 600, 1e-2)
    bare = _train(DimensionCompressor(24, 6), train, 600, 1e-2)
    gap = reconstruction_metrics(test, centred(test).detach())["mse"] / pca
    assert 1 - 0.02 <= gap <= 1.02
    assert reconstruction_metrics(test, bare(test).detach())["mse"] > 1.15 * pca   # spends a direction on the mean
    assert centred.num_parameters() == 6 * 24 and "mean" in centred.state_dict()   # a buffer, not a parameter


def test_checkpoint_roundtrip_is_the_one_checkpoint_format(tmp_path):
    m = DimensionCompressor(10, 4, bias=True, center=True)
    with torch.no_grad():
        m.mean.normal_()
    path = save_compressor(tmp_path / "stage1a_final", m, {"stage": "1a"})
    assert {p.name for p in path.iterdir()} >= {"model.safetensors", "state.json"}
    assert not list(path.glob("*.pt")) and not list(tmp_path.glob(".*"))   # no scratch left behind
    m2, state = load_compressor(path)
    assert m2.config() == {"d_model": 10, "d_compressed": 4, "bias": True, "center": True} and state["stage"] == "1a"
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])


# --------------------------------------------------------------------------------------------- extraction


class _Counting:
    """Wraps a source: counts hidden_states calls and can fail on the n-th one."""

    def __init__(self, inner, fail_at=None):
        self.inner, self.calls, self.fail_at = inner, 0, fail_at
        self.hidden_size = inner.hidden_size

    def encode(self, texts):
        return self.inner.encode(texts)

    def hidden_states(self, ids, mask, layer=-1):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("simulated crash")
        return self.inner.hidden_states(ids, mask, layer)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return save_tiny_random_model(tmp_path_factory.mktemp("lm") / "tiny-llama", hidden_size=32, num_heads=4)


def test_extraction_writes_shards_and_resumes_without_recomputing(tiny_lm, tmp_path):
    src = HFHiddenStateSource.from_pretrained(str(tiny_lm), max_seq_length=16, device="cpu")
    assert src.hidden_size == 32
    texts = generate_cot_corpus(20, seed=0)
    out = tmp_path / "cache"
    kw = dict(layer=-1, batch_size=4, shard_size=8, dtype="fp16", num_samples=20, progress=False)
    crashing = _Counting(src, fail_at=3)  # shard 0 = calls 1-2, the crash hits shard 1
    with pytest.raises(RuntimeError):
        extract_hidden_states(crashing, texts, out, **kw)
    assert (out / "shard_00000.safetensors").exists() and not (out / "shard_00001.safetensors").exists()
    first = _digest(out / "shard_00000.safetensors")

    counting = _Counting(src)
    summary = extract_hidden_states(counting, texts, out, **kw)
    assert summary["skipped"] == [0] and summary["computed"] == [1, 2]
    assert counting.calls == 3  # shard 1: 2 batches, shard 2 (4 texts): 1 batch
    assert _digest(out / "shard_00000.safetensors") == first
    man = read_manifest(out)
    assert man["complete"] and man["num_samples"] == 20 and [s["num_samples"] for s in man["shards"]] == [8, 8, 4]

    built = []
    again = extract_hidden_states(lambda: built.append(1) or src, texts, out, **kw)
    assert again["computed"] == [] and not built  # nothing recomputed, the model not even loaded

    from safetensors.torch import load_file

    shard = load_file(str(out / "shard_00001.safetensors"))
    assert shard["hidden"].dtype == torch.float16 and shard["hidden"].shape[0] == 8 and shard["hidden"].shape[2] == 32
    assert shard["mask"].shape == shard["hidden"].shape[:2]
    assert (shard["hidden"][shard["mask"] == 0] == 0).all()
    # stored values are the model's hidden states for those texts
    ids, mask = src.encode(texts[8:10])
    ref = src.hidden_states(ids, mask, -1)
    cache = HiddenStateCache(out)
    got, got_mask = cache.get([8, 9])
    assert torch.equal(got_mask, mask.bool()[:, : got_mask.shape[1]])
    assert torch.allclose(got[got_mask], ref[mask.bool()].float(), atol=1e-2, rtol=1e-2)

    with pytest.raises(TrmError, match="other settings"):
        extract_hidden_states(src, texts, out, **dict(kw, dtype="fp32"))

    # --layer indexes output_hidden_states: 0 is the token embeddings, out-of-range is a TrmError
    emb = src.model.get_input_embeddings()(ids)
    assert torch.allclose(src.hidden_states(ids, mask, 0), emb)
    assert not torch.allclose(src.hidden_states(ids, mask, 1), emb)
    with pytest.raises(TrmError, match="out of range"):
        src.hidden_states(ids, mask, 5)


def test_unknown_model_offline_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TrmError, match="cannot load model no-such-org/no-such-model: not a local path and no network"):
        HFHiddenStateSource.from_pretrained("no-such-org/no-such-model")


def test_empty_text_sources_are_errors(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TrmError, match="empty"):
        iter_texts(str(empty), "1b")
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"text": "   "}) + "\n")
    out = tmp_path / "run"
    assert compress.main([*TINY, "--output_dir", str(out), "--data_root", str(tmp_path / "d"),
                          "--text_source", str(blank)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "empty" in err and "\n" not in err
    assert not list(out.glob("stage*"))


def test_text_sources_offline(monkeypatch):
    from trmlab.data.hidden_states import resolve_text_source

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_text_source("auto", "1a", log=lambda m: None) == "synthetic"
    assert resolve_text_source("auto", "1b", log=lambda m: None) == "synthetic-cot"
    assert resolve_text_source("fineweb-edu", "1a") == "HuggingFaceFW/fineweb-edu"
    with pytest.raises(TrmError, match="no network"):
        iter_texts("fineweb-edu", "1a", num_samples=3)
    assert len(list(iter_texts("synthetic", "1a", num_samples=3))) == 3


def test_cot_corpus_has_think_blocks_and_is_deterministic():
    docs = generate_cot_corpus(5, seed=3)
    assert docs == generate_cot_corpus(5, seed=3) and docs != generate_cot_corpus(5, seed=4)
    assert all("<think>" in d and "</think>" in d and "Answer:" in d for d in docs)


# ---------------------------------------------------------------------------------------------------- CLI
# `trm compress` is a front over the one trainer: each stage is a run in --output_dir/stage<X>, exported to
# --output_dir/stage<X>_final. 23 training samples / batch 4 x 2 epochs = 11 steps (train.epochs' rule).


def _cli(out, root, *extra):
    return _args(*TINY, "--output_dir", str(out), "--data_root", str(root), *extra)


@pytest.fixture(scope="module")
def phase1(tmp_path_factory):
    """(output dir, data root) of one stage-1a run."""
    out, root = tmp_path_factory.mktemp("phase1"), tmp_path_factory.mktemp("data")
    assert compress.run(_cli(out, root)) == 0
    return out, root


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_stage_1a_is_a_run_exported_under_the_seed_name(phase1):
    out, root = phase1
    run, final = out / "stage1a", out / "stage1a_final"
    assert {"config.yaml", "metrics.jsonl", "summary.json", "checkpoints"} <= {p.name for p in run.iterdir()}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000010", "step_0000011"]
    names = {p.name for p in final.iterdir()}
    assert {"model.safetensors", "state.json"} <= names and not any(n.startswith("optim") for n in names)
    state = json.loads((final / "state.json").read_text())
    assert state["step"] == 11 and state["config"]["task"] == "compressor"
    export = state["export"]
    assert set(export["metrics"]) >= {"mse", "cosine_similarity", "relative_error", "variance_ratio"}
    assert set(export["pca"]) >= {"mse", "cosine_similarity"} and export["source"]["model"] == "tiny-random"
    evals = [r for r in _records(run) if "eval" in r]
    assert [r["step"] for r in evals] == [5, 10, 11]
    assert evals[-1]["eval"]["pca_mse"] <= evals[-1]["eval"]["mse"] + 1e-6   # PCA is the optimum on held-out data
    comp, _ = load_compressor(final)
    assert comp.config() == {"d_model": 64, "d_compressed": 16, "bias": False, "center": True}
    # the mean it subtracts is that of the training tokens (23 samples, fewer tokens than pca_max_tokens)
    (cache_dir,) = (root / "hidden_states").iterdir()
    x, mask = HiddenStateCache(cache_dir).get(range(23))
    assert torch.allclose(comp.mean, x[mask].double().mean(0).float(), atol=1e-5)


def test_stage_1b_starts_from_1a_final(phase1, capsys):
    out, root = phase1
    # at a vanishing learning rate 1b ends where it started: the 1a weights, re-centred on the CoT data
    assert compress.run(_cli(out, root, "--stage", "1b", "--learning_rate", "1e-12")) == 0
    text = capsys.readouterr().out
    assert "starting from" in text and "stage1a_final" in text and "SYNTHETIC chain-of-thought" in text
    export = json.loads((out / "stage1b_final" / "state.json").read_text())["export"]
    assert export["stage"] == "1b" and export["init_from"].endswith("stage1a_final")
    assert export["source"]["text_source"] == "synthetic-cot"
    c1a, c1b = load_compressor(out / "stage1a_final")[0], load_compressor(out / "stage1b_final")[0]
    assert torch.allclose(c1a.weight, c1b.weight, atol=1e-6) and not torch.allclose(c1a.mean, c1b.mean)
    from trmlab.api import load
    from trmlab.tasks import get_task
    model, cfg = load(out / "stage1b")
    cfg.data.init_from = str(out / "gone")       # evaluating the 1b run does not need the 1a compressor any more
    task = get_task("compressor")
    again = task.evaluate(model, task.prepare(cfg, root), cfg, "cpu")
    assert again["mse"] == pytest.approx(export["metrics"]["mse"], rel=1e-6)


def test_stage_1b_on_the_models_own_thinking_traces(phase1, tmp_path, monkeypatch):
    from trmlab.llm import traces
    from trmlab.llm.problems import is_heldout
    from trmlab.llm.sources import load_hidden_state_source
    import shutil
    out, _ = phase1
    root = tmp_path / "data"

    def stage_1b(where):   # from phase1's stage-1a compressor, which 1b finds in its --output_dir
        shutil.copytree(out / "stage1a_final", where / "stage1a_final")
        argv = [a for a in TINY if a not in ("--text_source", "synthetic")]
        return compress.run(_args(*argv, "--data_root", str(root), "--stage", "1b", "--text_source", "self",
                                  "--trace_tokens", "6", "--output_dir", str(where)))
    assert stage_1b(tmp_path / "o") == 0
    (cache,) = [p for p in (root / "hidden_states").iterdir() if p.is_dir()]
    rows = [json.loads(x) for x in (root / "hidden_states" / f"traces-{cache.name}.jsonl").read_text().splitlines()]
    assert len(rows) == 24
    for r in rows:   # the model's prompt, the opened <think> block, then what it wrote itself
        assert r["question"].startswith(traces.SYNTHETIC_INSTRUCTION)
        assert not is_heldout(r["question"][len(traces.SYNTHETIC_INSTRUCTION):])   # training problems only
        assert r["text"] == f"Question: {r['question']}\n<think>\n" + r["trace"] and r["trace"]
    # the cache holds those texts' states: sample 0 is the traced text run through the same model
    src = load_hidden_state_source("tiny-random", max_seq_length=24, device="cpu")
    ids, mask = src.encode([rows[0]["text"]])
    want = src.hidden_states(ids, mask, -1)[0][mask[0].bool()]
    got, got_mask = HiddenStateCache(cache).get([0])
    assert torch.allclose(got[0][got_mask[0].bool()], want, atol=1e-5)
    # a rerun re-extracts from the traces on disk: the model is not asked to think again
    monkeypatch.setattr(traces, "write_traces", lambda *a, **k: pytest.fail("traces written twice"))
    shutil.rmtree(cache)
    assert stage_1b(tmp_path / "o2") == 0 and read_manifest(cache)["num_samples"] == 24


def test_self_traces_need_a_model_that_writes_text():
    from trmlab.llm.problems import Problem
    from trmlab.llm.traces import write_traces

    class StatesOnly:
        name, model, tokenizer = "runs/lm", object(), object()
    with pytest.raises(TrmError, match="needs an LLM that writes text"):
        write_traces(StatesOnly(), [Problem("1+1", "", "2")], Path("unused.jsonl"), 4)


def test_stage_1b_without_1a_fails_clearly(tmp_path):
    with pytest.raises(TrmError, match="stage 1a final checkpoint"):
        compress.run(_cli(tmp_path / "x", tmp_path / "data", "--stage", "1b"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "data").exists()


def test_mismatches_are_errors_and_overwrite_nothing(phase1, tiny_lm, tmp_path):
    out, root = phase1
    before = {p.name: _digest(p) for p in (out / "stage1a_final").iterdir()}
    with pytest.raises(TrmError, match="D'=16, but data.d_compressed is 8"):   # the 1b states are cached by now
        compress.run(_cli(tmp_path / "b", root, "--stage", "1b", "--d_compressed", "8",
                          f"data.init_from={out / 'stage1a_final'}"))
    assert not (tmp_path / "b").exists()
    with pytest.raises(TrmError, match="data.d_compressed is 16 in the run, 8 given"):
        compress.run(_cli(out, root, "--resume", "--d_compressed", "8"))
    with pytest.raises(TrmError, match="already exists"):   # refused before extracting anything
        compress.run(_cli(out, tmp_path / "fresh"))
    assert not (tmp_path / "fresh").exists()
    with pytest.raises(TrmError, match="maps D=64, but the source model has hidden size 32"):
        compress.run(_cli(tmp_path / "b", root, "--stage", "1b", "--model", str(tiny_lm),
                          f"data.init_from={out / 'stage1a_final'}"))
    with pytest.raises(TrmError, match="exceeds the source model's hidden size"):
        compress.run(_cli(tmp_path / "big", root, "--d_compressed", "65"))
    assert {p.name: _digest(p) for p in (out / "stage1a_final").iterdir()} == before


def test_unknown_model_via_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = compress.main(["--model", "no-such-org/no-such-model", "--no_wandb", "--output_dir", str(tmp_path / "o")])
    assert rc == 2
    assert capsys.readouterr().err.strip() == \
        "error: cannot load model no-such-org/no-such-model: not a local path and no network"
    assert not (tmp_path / "o").exists()


def test_resume_continues_from_the_latest_checkpoint(phase1, tmp_path):
    out, root = phase1
    import shutil
    resumed = tmp_path / "resumed"
    shutil.copytree(out / "stage1a", resumed / "stage1a")
    shutil.rmtree(resumed / "stage1a" / "checkpoints" / "step_0000011")   # as if stopped after step 10
    assert compress.run(_cli(resumed, root, "--resume")) == 0
    assert [r["step"] for r in _records(resumed / "stage1a") if "eval" in r] == [5, 10, 11]
    w_resumed = load_compressor(resumed / "stage1a_final")[0].weight
    assert torch.allclose(w_resumed, load_compressor(out / "stage1a_final")[0].weight, atol=1e-6)


def test_sweep_writes_subdirs_table_plot_and_results(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out, root = tmp_path / "sweep", tmp_path / "data"
    argv = [a for a in TINY if a != "--no_wandb"]
    assert compress.run(_args(*argv, "--output_dir", str(out), "--data_root", str(root), "--sweep",
                              "--sweep_d_values", "8", "32")) == 0
    text = capsys.readouterr().out
    try:
        import wandb  # noqa: F401
    except ImportError:
        assert text.count("wandb is not installed") == 1  # said once for the whole sweep
    for d in (8, 32):
        assert (out / f"d{d}" / "stage1a_final" / "model.safetensors").exists()
        assert (out / f"d{d}" / "stage1a" / "metrics.jsonl").exists()
    assert "PCA cos" in text and "D_prime" in text
    png = out / "sweep_cosine_similarity.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "sweep_results.json").read_text())
    rows = {r["d_compressed"]: r for r in res["results"]}
    assert set(rows) == {8, 32}
    assert rows[8]["params"] == 8 * 64 and rows[32]["compression_ratio"] == 2.0
    assert rows[32]["pca"]["cosine_similarity"] > rows[8]["pca"]["cosine_similarity"]
    for r in rows.values():
        assert r["pca"]["mse"] <= r["compressor"]["mse"] + 1e-6
    assert len(list((root / "hidden_states").iterdir())) == 1   # one extraction shared by every D'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_with_the_same_global_batch(phase1, tmp_path):
    out, root = phase1
    one = tmp_path / "one"
    assert compress.run(_cli(one, root, "--batch_size", "4")) == 0
    two = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "trmlab.compress", *TINY, "--output_dir", str(two),
           "--data_root", str(root), "--batch_size", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "global batch 4 (2 processes)" in proc.stdout
    w1, w2 = load_compressor(one / "stage1a_final")[0].weight, load_compressor(two / "stage1a_final")[0].weight
    assert torch.allclose(w1, w2, atol=1e-5), (w1 - w2).abs().max()
    m1, m2 = (json.loads((d / "stage1a_final" / "state.json").read_text())["export"]["metrics"] for d in (one, two))
    assert m1["mse"] == pytest.approx(m2["mse"], rel=1e-4) and m1["num_tokens"] == m2["num_tokens"]


def test_truncated_compressor_export_is_a_one_line_error(phase1, tmp_path, capsys):
    out, root = phase1
    import shutil
    cut = tmp_path / "cut"
    shutil.copytree(out / "stage1a_final", cut / "stage1a_final")
    weights = cut / "stage1a_final" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(TrmError, match="model.safetensors"):
        load_compressor(cut / "stage1a_final")
    assert compress.main([*TINY, "--output_dir", str(cut), "--data_root", str(root), "--stage", "1b"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "stage1a_final/model.safetensors" in err and "\n" not in err
    assert not list(cut.glob("stage1b*"))


def _tensors(path: Path) -> dict:
    """A shard's tensors as plain lists: its bytes are not comparable (safetensors writes metadata in hash order),
    and the mmap behind load_file must not outlive the file being cut short."""
    from safetensors.torch import load_file
    return {k: v.tolist() for k, v in load_file(str(path)).items()}


def test_truncated_hidden_state_shard_is_reported_and_re_extracted(tiny_lm, tmp_path):
    src = HFHiddenStateSource.from_pretrained(str(tiny_lm), max_seq_length=16, device="cpu")
    texts = generate_cot_corpus(20, seed=0)
    out = tmp_path / "cache"
    kw = dict(layer=-1, batch_size=4, shard_size=8, dtype="fp32", num_samples=20, progress=False)
    extract_hidden_states(src, texts, out, **kw)
    shard = out / "shard_00001.safetensors"
    good = _tensors(shard)
    shard.write_bytes(shard.read_bytes()[:100])
    cache = HiddenStateCache(out)
    cache.get([0])                                                       # the intact shard still reads
    with pytest.raises(TrmError, match=r"shard_00001.safetensors: corrupt hidden-state shard.*rerun") as e:
        cache.get([8])
    assert "\n" not in str(e.value) and not read_manifest(out)["complete"]
    again = extract_hidden_states(src, texts, out, **kw)
    assert again["computed"] == [1] and again["skipped"] == [0, 2] and _tensors(shard) == good
    # cut short while the manifest says complete: the rerun finds it without reading any data
    shard.write_bytes(shard.read_bytes()[:100])
    assert extract_hidden_states(src, texts, out, **kw)["computed"] == [1] and _tensors(shard) == good
    assert HiddenStateCache(out).get([8])[0].shape[0] == 1


def test_cli_re_extracts_a_truncated_shard_and_keeps_only_the_latest_checkpoints(phase1, tmp_path, capsys):
    out, root = phase1
    import shutil
    data = tmp_path / "data"
    shutil.copytree(root / "hidden_states", data / "hidden_states")
    (shard,) = (data / "hidden_states").glob("1a-*/shard_00001.safetensors")
    good = _tensors(shard)
    shard.write_bytes(shard.read_bytes()[:100])
    run = tmp_path / "run"
    assert compress.main([*TINY, "--output_dir", str(run), "--data_root", str(data), "--save_every", "1",
                          "--keep_checkpoints", "2"]) == 0
    assert "[1] of" in capsys.readouterr().out and _tensors(shard) == good
    assert sorted(p.name for p in (run / "stage1a" / "checkpoints").iterdir()) == ["step_0000010", "step_0000011"]
    assert compress.main([*TINY, "--output_dir", str(tmp_path / "x"), "--data_root", str(data), "--keep_checkpoints", "-1"]) == 2
    assert "--keep_checkpoints must be >= 0" in capsys.readouterr().err


def test_non_utf8_text_source_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    out = tmp_path / "run"
    assert compress.main([*TINY, "--output_dir", str(out), "--data_root", str(tmp_path / "d"),
                          "--text_source", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "bad.jsonl:2: not UTF-8" in err and "\n" not in err
    assert not out.exists()


def test_trm_train_runs_the_preset_and_trm_eval_reads_the_run(phase1, tmp_path):
    """The same task without the front: `trm train compressor-1a ...`, then evaluation of the run."""
    from trmlab.api import load
    from trmlab.config import load_config
    from trmlab.tasks import get_task
    from trmlab.train.trainer import Trainer
    out, root = phase1
    cfg = load_config("compressor-1a", ["data.llm=tiny-random", "data.num_samples=24", "data.max_seq_length=24",
                                        "data.text_source=synthetic", "data.dtype=fp32", "data.shard_size=8",
                                        "data.d_compressed=16", "train.batch_size=4", "train.epochs=2",
                                        "train.eval_interval=0", "train.threads=1"])
    summary = Trainer(cfg, tmp_path / "run", data_root=root, quiet=True).fit()
    assert summary["steps"] == 11 and summary["metric"] == "mse"
    exported = json.loads((out / "stage1a_final" / "state.json").read_text())["export"]["metrics"]
    assert summary["eval"]["mse"] == pytest.approx(exported["mse"], rel=1e-6)   # the front adds nothing
    model, cfg = load(tmp_path / "run")
    task = get_task("compressor")
    again = task.evaluate(model, task.prepare(cfg, root), cfg, "cpu")
    assert again["mse"] == pytest.approx(summary["eval"]["mse"], rel=1e-6)
    assert again["mse_vs_pca"] == pytest.approx(again["mse"] / again["pca_mse"])
