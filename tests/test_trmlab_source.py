"""A trmlab LM run (recursive or GPT) as the phase-1 hidden-state source: ``--model runs/<lm run>``."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from trmlab.cli import compress
from trmlab.config import load_config
from trmlab.data.hidden_states import HiddenStateCache, iter_texts
from trmlab.llm.sources import find_source_loader, load_hidden_state_source
from trmlab.data.text import TextDataConfig, build_text
from trmlab.llm.trmlab_source import TrmlabLMSource
from trmlab.errors import TrmError
from trmlab.train.trainer import Trainer

RUN = ["data.n_docs=120", "data.vocab_size=300", "data.val_fraction=0.1", "model.seq_len=32", "model.n_embd=32",
       "model.n_head=4", "model.n_kv_head=2", "model.n_layer=2", "model.n_loops=1", "model.T_recursion=2",
       "model.n_sup_train=3", "model.n_sup_inference=3", "train.batch_size=4", "train.steps=3",
       "train.time_budget_s=0", "train.eval_interval=0", "train.eval_samples=8", "train.threads=1"]
GPT = ["model.arch=gpt", "model.n_loops=1", "model.T_recursion=1", "model.n_sup_train=1", "model.n_sup_inference=1"]
TEXTS = ["A story about the sea.", "Mira lives in Tolvane. 57 plus 38 is 95. Some silver crabs chase the anchor."]


@pytest.fixture(scope="module")
def lm_runs(tmp_path_factory):
    """(runs dir, data root): a recursive LM and a GPT, each trained for 3 steps on a tiny synthetic corpus."""
    root = tmp_path_factory.mktemp("lmdata")
    build_text(TextDataConfig(n_docs=120, vocab_size=300, val_fraction=0.1), out_root=root)
    runs = tmp_path_factory.mktemp("lmruns")
    for name, extra in (("rec", []), ("gpt", GPT)):
        cfg = load_config("lm-tiny", RUN + extra)
        cfg.name = name
        Trainer(cfg, runs / name, data_root=root, quiet=True).fit()
    return runs, root


def _source(runs, root, name, **kw) -> TrmlabLMSource:
    src = load_hidden_state_source(str(runs / name), device="cpu", data_root=str(root), **kw)
    assert isinstance(src, TrmlabLMSource)
    return src


def test_gpt_run_layers_are_embeddings_blocks_and_what_the_head_reads(lm_runs):
    runs, root = lm_runs
    src = _source(runs, root, "gpt")
    assert (src.hidden_size, src.num_layers, src.arch) == (32, 2, "gpt")
    ids, mask = src.encode(TEXTS)
    assert ids[0, 0] == src.tokenizer.eot_id and mask[0].sum() < mask[1].sum()  # EOT first, as in training
    states = src.all_hidden_states(ids)
    assert len(states) == 3 and all(h.shape == (2, ids.shape[1], 32) for h in states)
    assert torch.equal(src.hidden_states(ids, mask, 0), src.model.wte(ids))
    final = src.hidden_states(ids, mask, -1)
    assert torch.equal(final, src.hidden_states(ids, mask, 2))
    assert torch.allclose(final, src.model.hidden(ids), atol=1e-6)  # exactly what lm_head reads
    logits = src.model.step({"inputs": ids}).logits
    assert torch.allclose(src.head(final), logits, atol=1e-5)
    assert not torch.allclose(src.hidden_states(ids, mask, 1), final)
    for bad in (3, -4):
        with pytest.raises(TrmError, match="out of range"):
            src.hidden_states(ids, mask, bad)


def test_recursive_run_layers_are_supervision_steps_and_last_is_what_the_head_reads(lm_runs):
    runs, root = lm_runs
    src = _source(runs, root, "rec")
    assert (src.num_layers, src.arch) == (3, "recursive")  # n_sup_inference steps
    ids, mask = src.encode(TEXTS)
    final = src.hidden_states(ids, mask, -1)
    logits, used = src.model.decode(ids)  # the model's own inference path: all n_sup_inference steps
    assert used == 3 and torch.allclose(src.head(final[:, -1]), logits, atol=1e-5)
    # step k's y is what the head reads for step k's prediction (trm eval's per-step loss)
    carry = None
    for k in range(1, 4):
        out = src.model.step({"inputs": ids}, carry)
        carry = out.carry
        assert torch.allclose(src.head(src.hidden_states(ids, mask, k)), out.logits, atol=1e-5)
    assert torch.equal(src.hidden_states(ids, mask, 0), src.model.embed({"inputs": ids}))
    with pytest.raises(TrmError, match="supervision steps"):
        src.check_layer(4)


def test_padding_and_batching_do_not_change_real_positions(lm_runs):
    runs, root = lm_runs
    for name in ("rec", "gpt"):
        src = _source(runs, root, name)
        ids, mask = src.encode(TEXTS)
        batched = src.hidden_states(ids, mask)
        for i, text in enumerate(TEXTS):
            one_ids, one_mask = src.encode([text])
            alone = src.hidden_states(one_ids, one_mask)
            n = int(one_mask.sum())
            assert torch.allclose(batched[i, :n], alone[0, :n], atol=1e-5)


def test_context_caps_the_sequence_length(lm_runs):
    runs, root = lm_runs
    src = _source(runs, root, "gpt", max_seq_length=512)
    ids, mask = src.encode(["word " * 200])
    assert ids.shape[1] == 32 == src.context  # model.seq_len, not --max_seq_length


def _tiny_args(runs, root, name, out, *extra):
    return ["--model", str(runs / name), "--data_root", str(root), "--no_wandb", "--num_samples", "24",
            "--max_seq_length", "512", "--batch_size", "4", "--num_epochs", "1", "--text_source", "synthetic",
            "--dtype", "fp32", "--no_progress", "--shard_size", "8", "--output_dir", str(out), "--threads", "1",
            "--cache_dir", str(out / "hidden_states"), *extra]


def test_compress_runs_end_to_end_on_a_trained_run(lm_runs, tmp_path, capsys):
    runs, root = lm_runs
    out = tmp_path / "phase1"
    argv = _tiny_args(runs, root, "rec", out, "--sweep", "--sweep_d_values", "4", "16")
    assert compress.main(argv) == 0
    text = capsys.readouterr().out
    assert "context of 32 tokens" in text and "tokens/s" in text and "samples/s" in text
    res = json.loads((out / "sweep_results.json").read_text())
    assert res["d_model"] == 32 and {r["d_compressed"] for r in res["results"]} == {4, 16}
    assert res["extraction"]["tokens"] > 0 and res["extraction"]["tokens_per_s"] > 0
    for r in res["results"]:
        assert r["pca"]["mse"] <= r["compressor"]["mse"] + 1e-6
        assert r["throughput"]["samples_per_s"] > 0
    (cache_dir,) = (p for p in (out / "hidden_states").iterdir() if p.is_dir())
    cfg = json.loads((cache_dir / "manifest.json").read_text())["config"]
    assert cfg["source"]["kind"] == "trmlab" and cfg["source"]["arch"] == "recursive" and len(cfg["source"]["sha1"]) == 40
    cache = HiddenStateCache(cache_dir)
    assert max(s["max_length"] for s in cache.shards) <= 32
    # the stored states are the model's final states for the same texts
    src = _source(runs, root, "rec")
    texts = list(iter_texts("synthetic", "1a", num_samples=2, seed=42, log=lambda m: None))
    ids, mask = src.encode(texts)
    got, got_mask = cache.get([0, 1])
    assert torch.equal(got_mask, mask.bool()[:, : got_mask.shape[1]])
    assert torch.allclose(got[got_mask], src.hidden_states(ids, mask)[mask.bool()], atol=1e-5)
    # stage 1b on the same model, from the 1a final of d16 (the offline CoT default)
    assert compress.main(_tiny_args(runs, root, "rec", out / "d16", "--stage", "1b", "--d_compressed", "16")) == 0
    assert "starting from" in capsys.readouterr().out


def test_gpt_run_with_a_chosen_layer(lm_runs, tmp_path):
    runs, root = lm_runs
    out = tmp_path / "gpt"
    assert compress.main(_tiny_args(runs, root, "gpt", out, "--layer", "1", "--d_compressed", "8")) == 0
    source = json.loads((out / "stage1a_final" / "state.json").read_text())["export"]["source"]
    assert source["layer"] == 1 and source["fingerprint"]["arch"] == "gpt"


def _one_line_error(capsys, argv, *needles):
    assert compress.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_bad_runs_are_one_line_errors_that_write_nothing(lm_runs, tmp_path, capsys):
    runs, root = lm_runs
    out = tmp_path / "o"
    # an existing directory that is neither a trmlab run nor a transformers model
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, _tiny_args(tmp_path, root, "empty", out), "neither a trmlab LM run")
    # a run that never saved a checkpoint
    (tmp_path / "nockpt").mkdir()
    (tmp_path / "nockpt" / "config.yaml").write_text("task: lm\n")
    _one_line_error(capsys, _tiny_args(tmp_path, root, "nockpt", out), "without a checkpoint")
    # a run of another task
    sudoku = tmp_path / "sudoku" / "checkpoints" / "step_0000001"
    sudoku.mkdir(parents=True)
    (sudoku / "model.safetensors").write_bytes(b"")
    (sudoku / "state.json").write_text(json.dumps({"step": 1, "config": load_config("sudoku").to_dict()}))
    _one_line_error(capsys, _tiny_args(tmp_path, root, "sudoku", out), "'sudoku' run", "task lm")
    # the tokenizer cannot be found: neither in the run (a copy without it) nor under the data root
    shutil.copytree(runs / "gpt", tmp_path / "runs" / "gpt")
    (tmp_path / "runs" / "gpt" / "tokenizer.json").unlink()
    _one_line_error(capsys, _tiny_args(tmp_path / "runs", tmp_path / "nodata", "gpt", out),
                    "cannot find the tokenizer", "--data_root")
    _one_line_error(capsys, _tiny_args(runs, root, "gpt", out, "--tokenizer", str(tmp_path / "x.json")),
                    "does not exist")
    # layer out of range, D' wider than the model
    _one_line_error(capsys, _tiny_args(runs, root, "gpt", out, "--layer", "3"), "--layer 3 out of range")
    _one_line_error(capsys, _tiny_args(runs, root, "rec", out, "--d_compressed", "33"), "exceeds", "hidden size 32")
    assert not out.exists()


def test_hidden_size_mismatch_with_a_1a_checkpoint_of_another_model(lm_runs, tmp_path, capsys):
    runs, root = lm_runs
    out = tmp_path / "p"
    tiny = ["--model", "tiny-random", "--no_wandb", "--num_samples", "24", "--max_seq_length", "24", "--batch_size",
            "4", "--num_epochs", "1", "--text_source", "synthetic", "--no_progress", "--shard_size", "8",
            "--d_compressed", "16", "--output_dir", str(out), "--data_root", str(tmp_path / "data"), "--threads", "1"]
    assert compress.main(tiny) == 0  # a 1a compressor for D = 64
    capsys.readouterr()
    before = (out / "stage1a_final" / "model.safetensors").read_bytes()
    _one_line_error(capsys, _tiny_args(runs, root, "rec", out, "--stage", "1b", "--d_compressed", "16"),
                    "maps D=64, but the source model has hidden size 32")
    _one_line_error(capsys, _tiny_args(runs, root, "rec", out, "--d_compressed", "16"), "already exists")
    assert (out / "stage1a_final" / "model.safetensors").read_bytes() == before
    assert not (out / "stage1b_final").exists()


def test_only_run_directories_are_claimed(lm_runs, tmp_path):
    runs, _ = lm_runs
    assert find_source_loader(str(runs / "rec")) is not None
    assert find_source_loader(str(runs / "rec" / "checkpoints" / "step_0000003")) is not None
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert find_source_loader(str(hf)) is None and find_source_loader("HuggingFaceTB/SmolLM3-3B") is None
