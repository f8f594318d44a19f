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

from trmlab import compress
from trmlab.data.hidden_states import (
    HFHiddenStateSource,
    HiddenStateCache,
    extract_hidden_states,
    generate_cot_corpus,
    iter_texts,
    read_manifest,
    save_tiny_random_model,
)
from trmlab.errors import TrmError
from trmlab.models.compressor import (
    DimensionCompressor,
    ReconstructionMetrics,
    load_compressor_checkpoint,
    pca_reconstruction,
    reconstruction_metrics,
)

TINY = ["--model", "tiny-random", "--no_wandb", "--num_samples", "24", "--max_seq_length", "24", "--batch_size", "4",
        "--num_epochs", "2", "--text_source", "synthetic", "--dtype", "fp32", "--no_progress", "--shard_size", "8",
        "--save_every", "5", "--eval_every", "5", "--log_every", "5", "--d_compressed", "16"]


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


def test_checkpoint_roundtrip_is_safetensors_plus_json(tmp_path):
    from trmlab.models.compressor import save_compressor_checkpoint

    m = DimensionCompressor(10, 4, bias=True)
    save_compressor_checkpoint(tmp_path / "stage1a_final", m, {"stage": "1a", "step": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage1a_final.json", "stage1a_final.safetensors"]
    m2, meta, extra = load_compressor_checkpoint(tmp_path / "stage1a_final.safetensors")
    assert meta["config"] == {"d_model": 10, "d_compressed": 4, "bias": True} and meta["step"] == 3 and not extra
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
    assert compress.main([*TINY, "--output_dir", str(out), "--text_source", str(blank)]) == 2
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


@pytest.fixture(scope="module")
def stage1a_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("phase1")
    assert compress.run(_args(*TINY, "--output_dir", str(out))) == 0
    return out


def test_stage_1a_writes_seed_checkpoint_layout(stage1a_dir):
    names = {p.name for p in stage1a_dir.iterdir()}
    # 23 train samples / batch 4 = 5 steps per epoch, 2 epochs, --save_every 5
    for stem in ("stage1a_step5", "stage1a_step10", "stage1a_final"):
        assert f"{stem}.safetensors" in names and f"{stem}.json" in names
    assert not any(n.endswith(".pt") for n in names)
    meta = json.loads((stage1a_dir / "stage1a_final.json").read_text())
    assert meta["config"] == {"d_model": 64, "d_compressed": 16, "bias": False} and meta["step"] == 10
    assert set(meta["metrics"]) >= {"mse", "cosine_similarity", "relative_error", "variance_ratio"}
    assert set(meta["pca"]) >= {"mse", "cosine_similarity"} and meta["source"]["model"] == "tiny-random"
    records = [json.loads(line) for line in (stage1a_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [5, 10] and evals[-1]["final"]
    assert evals[-1]["pca_mse"] <= evals[-1]["mse"] + 1e-6  # PCA is the optimum on held-out data
    model, _, extra = load_compressor_checkpoint(stage1a_dir / "stage1a_step5")
    assert set(extra) == {"optimizer.0.exp_avg", "optimizer.0.exp_avg_sq"}  # step checkpoints can resume


def test_stage_1b_starts_from_1a_final(stage1a_dir, capsys):
    assert compress.run(_args(*TINY, "--output_dir", str(stage1a_dir), "--stage", "1b")) == 0
    out = capsys.readouterr().out
    assert "starting from" in out and "stage1a_final" in out and "SYNTHETIC" in out
    meta = json.loads((stage1a_dir / "stage1b_final.json").read_text())
    assert meta["stage"] == "1b" and meta["init_from"].endswith("stage1a_final.safetensors")
    assert (stage1a_dir / "stage1b_step5.safetensors").exists()
    assert meta["source"]["text_source"] == "synthetic-cot"
    # 1b really started from 1a: fewer steps than 1a took are needed to be at least as good on its own data
    w1a = load_compressor_checkpoint(stage1a_dir / "stage1a_final")[0].weight
    w1b = load_compressor_checkpoint(stage1a_dir / "stage1b_final")[0].weight
    assert not torch.equal(w1a, w1b)


def test_stage_1b_without_1a_fails_clearly(tmp_path):
    with pytest.raises(TrmError, match="stage 1a final checkpoint"):
        compress.run(_args(*TINY, "--output_dir", str(tmp_path / "x"), "--stage", "1b"))
    assert not (tmp_path / "x").exists()


def test_mismatches_are_errors_and_overwrite_nothing(stage1a_dir, tiny_lm, tmp_path):
    before = {p.name: _digest(p) for p in stage1a_dir.glob("stage1a_*")}
    with pytest.raises(TrmError, match="D'=16 but --d_compressed is 8"):
        compress.run(_args(*TINY, "--output_dir", str(stage1a_dir), "--stage", "1b", "--d_compressed", "8"))
    with pytest.raises(TrmError, match="D'=16 but --d_compressed is 8"):
        compress.run(_args(*TINY, "--output_dir", str(stage1a_dir), "--resume", "--d_compressed", "8"))
    with pytest.raises(TrmError, match="already holds stage 1a checkpoints"):
        compress.run(_args(*TINY, "--output_dir", str(stage1a_dir), "--d_compressed", "8"))
    with pytest.raises(TrmError, match="hidden size D=64 but the source model has D=32"):
        compress.run(_args(*TINY, "--output_dir", str(stage1a_dir), "--stage", "1b", "--model", str(tiny_lm)))
    with pytest.raises(TrmError, match="exceeds the source model's hidden size"):
        compress.run(_args(*TINY, "--output_dir", str(tmp_path / "big"), "--d_compressed", "65"))
    assert {p.name: _digest(p) for p in stage1a_dir.glob("stage1a_*")} == before


def test_unknown_model_via_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = compress.main(["--model", "no-such-org/no-such-model", "--no_wandb", "--output_dir", str(tmp_path / "o")])
    assert rc == 2
    assert capsys.readouterr().err.strip() == \
        "error: cannot load model no-such-org/no-such-model: not a local path and no network"
    assert not (tmp_path / "o").exists()


def test_resume_continues_from_the_latest_step(stage1a_dir, tmp_path):
    out = tmp_path / "resume"
    out.mkdir()
    for stem in ("stage1a_step5",):
        for ext in (".safetensors", ".json"):
            (out / f"{stem}{ext}").write_bytes((stage1a_dir / f"{stem}{ext}").read_bytes())
    cache = str(stage1a_dir / "hidden_states")
    assert compress.run(_args(*TINY, "--output_dir", str(out), "--resume", "--cache_dir", cache)) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["type"] == "start" and records[0]["step"] == 5
    resumed = load_compressor_checkpoint(out / "stage1a_final")[0].weight
    straight = load_compressor_checkpoint(stage1a_dir / "stage1a_final")[0].weight
    assert torch.allclose(resumed, straight, atol=1e-6)  # same data order, same optimizer state


def test_sweep_writes_subdirs_table_plot_and_results(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "sweep"
    argv = [a for a in TINY if a != "--no_wandb"]
    assert compress.run(_args(*argv, "--output_dir", str(out), "--sweep", "--sweep_d_values", "8", "32")) == 0
    text = capsys.readouterr().out
    try:
        import wandb  # noqa: F401
    except ImportError:
        assert text.count("wandb is not installed") == 1  # said once for the whole sweep
    for d in (8, 32):
        assert (out / f"d{d}" / "stage1a_final.safetensors").exists()
        assert (out / f"d{d}" / "metrics.jsonl").exists()
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
    # one extraction shared by every D'
    assert len(list((out / "hidden_states").iterdir())) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_with_the_same_global_batch(stage1a_dir, tmp_path):
    cache = str(stage1a_dir / "hidden_states")
    common = [*TINY, "--cache_dir", cache]
    one = tmp_path / "one"
    assert compress.run(_args(*common, "--output_dir", str(one), "--batch_size", "4")) == 0
    two = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "trmlab.compress",
           *common, "--output_dir", str(two), "--batch_size", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "(2 processes)" in proc.stdout
    w1 = load_compressor_checkpoint(one / "stage1a_final")[0].weight
    w2 = load_compressor_checkpoint(two / "stage1a_final")[0].weight
    assert torch.allclose(w1, w2, atol=1e-5), (w1 - w2).abs().max()
    m1 = json.loads((one / "stage1a_final.json").read_text())["metrics"]
    m2 = json.loads((two / "stage1a_final.json").read_text())["metrics"]
    assert m1["mse"] == pytest.approx(m2["mse"], rel=1e-4) and m1["num_tokens"] == m2["num_tokens"]


def test_truncated_compressor_checkpoint_is_a_one_line_error(stage1a_dir, tmp_path, capsys):
    out = tmp_path / "cut"
    out.mkdir()
    for ext in (".safetensors", ".json"):
        (out / f"stage1a_final{ext}").write_bytes((stage1a_dir / f"stage1a_final{ext}").read_bytes())
    final = out / "stage1a_final.safetensors"
    final.write_bytes(final.read_bytes()[:50])
    with pytest.raises(TrmError, match="stage1a_final.safetensors: corrupt or unreadable compressor checkpoint"):
        load_compressor_checkpoint(out / "stage1a_final")
    assert compress.main([*TINY, "--output_dir", str(out), "--stage", "1b"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "stage1a_final.safetensors: corrupt" in err and "\n" not in err
    assert not list(out.glob("stage1b_*"))


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


def test_cli_re_extracts_a_truncated_shard_and_keeps_only_the_latest_step_checkpoints(stage1a_dir, tmp_path,
                                                                                     capsys):
    import shutil
    cache = tmp_path / "hidden_states"
    shutil.copytree(stage1a_dir / "hidden_states", cache)
    (shard,) = cache.glob("1a-*/shard_00001.safetensors")
    good = _tensors(shard)
    shard.write_bytes(shard.read_bytes()[:100])
    out = tmp_path / "run"
    assert compress.main([*TINY, "--output_dir", str(out), "--cache_dir", str(cache), "--save_every", "1",
                          "--keep_checkpoints", "2"]) == 0
    assert "[1] of" in capsys.readouterr().out and _tensors(shard) == good
    steps = sorted(p.name for p in out.glob("stage1a_step*"))             # 10 steps, one save each: two stay
    assert steps == ["stage1a_step10.json", "stage1a_step10.safetensors",
                     "stage1a_step9.json", "stage1a_step9.safetensors"]
    assert load_compressor_checkpoint(out / "stage1a_step9")[2]           # the kept ones still resume
    assert compress.main([*TINY, "--output_dir", str(tmp_path / "x"), "--keep_checkpoints", "-1"]) == 2
    assert "--keep_checkpoints must be >= 0" in capsys.readouterr().err


def test_non_utf8_text_source_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    out = tmp_path / "run"
    assert compress.main([*TINY, "--output_dir", str(out), "--text_source", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "bad.jsonl:2: not UTF-8" in err and "\n" not in err
    assert not list(out.glob("stage*"))
