"""Language models: the recursive LM and the plain GPT baseline, their presets, generation, compare, and errors."""

import json

import pytest
import torch

from trmlab.api import build_model, load
from trmlab.cli import main
from trmlab.config import load_config
from trmlab.data.text import TextDataConfig, build_text
from trmlab.errors import TrmError
from trmlab.eval.generate import generate_ids, sample_next
from trmlab.eval.flops import flops_per_token, matmul_params
from trmlab.models.lm import GPTConfig, RecursiveLM
from trmlab.nn.attention import Attention, KVCache
from trmlab.tasks import get_task
from trmlab.train.trainer import Trainer

TINY = ["model.vocab_size=64", "model.seq_len=16", "model.n_embd=32", "model.n_head=4", "model.n_kv_head=2",
        "model.n_layer=2", "model.n_loops=2", "model.T_recursion=2", "model.n_sup_train=2",
        "model.n_sup_inference=2"]
GPT_TINY = ["model.arch=gpt", "model.n_loops=1", "model.T_recursion=1", "model.n_sup_train=1",
            "model.n_sup_inference=1"]


def tiny_model(arch: str = "recursive", *extra):
    torch.manual_seed(0)
    cfg = load_config("lm-tiny", TINY + (GPT_TINY if arch == "gpt" else []) + list(extra))
    return build_model(cfg).eval(), cfg


# --- the models -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["recursive", "gpt"])
def test_changing_a_future_token_never_changes_earlier_logits(arch):
    model, _ = tiny_model(arch)
    x = torch.randint(0, 64, (2, 16))
    t = 9
    x2 = x.clone()
    x2[:, t] = (x2[:, t] + 1) % 64
    with torch.no_grad():
        a, b = model.step({"inputs": x}).logits, model.step({"inputs": x2}).logits
    assert torch.allclose(a[:, :t], b[:, :t], atol=1e-5)
    assert not torch.allclose(a[:, t:], b[:, t:], atol=1e-3)


def test_recursive_lm_runs_the_engine_schedule_per_step():
    model, cfg = tiny_model()
    assert isinstance(model, RecursiveLM)
    model.core.n_calls = 0
    with torch.no_grad():
        model.step({"inputs": torch.zeros(1, 16, dtype=torch.long)})
    assert model.core.n_calls == cfg.model.T_recursion * (cfg.model.n_loops + 1)


def test_gqa_shapes_and_equality_with_mha_when_kv_heads_are_shared():
    torch.manual_seed(0)
    gqa = Attention(32, n_head=4, n_kv_head=2, causal=True)
    assert gqa.qkv.weight.shape == ((4 + 2 * 2) * 8, 32)      # fewer key/value heads, smaller projection
    mha = Attention(32, n_head=4, n_kv_head=4, causal=True)
    q, k, v = gqa.qkv.weight.split([32, 16, 16])
    # head j of the 2 kv heads serves query heads 2j, 2j+1: replicate it and MHA must give the same output
    rep = lambda w: w.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32)
    with torch.no_grad():
        mha.qkv.weight.copy_(torch.cat([q, rep(k), rep(v)]))
        mha.out.weight.copy_(gqa.out.weight)
        x = torch.randn(2, 10, 32)
        y = gqa(x)
        assert y.shape == (2, 10, 32)
        assert torch.allclose(y, mha(x), atol=1e-5)
    small, _ = tiny_model("recursive")
    full, _ = tiny_model("recursive", "model.n_kv_head=4")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in full.parameters())


@pytest.mark.parametrize("arch", ["gpt", "recursive"])
def test_kv_cache_generation_equals_full_recomputation(arch):
    model, _ = tiny_model(arch, "model.seq_len=32")
    prompt = [0, 5, 17, 3]
    cached = generate_ids(model, prompt, 20, temperature=0, use_cache=True)
    full = generate_ids(model, prompt, 20, temperature=0, use_cache=False)
    assert cached.tokens == full.tokens and len(cached.tokens) == 20
    assert cached.cache_mb > 0 and full.cache_mb == 0
    # and the logits themselves, token by token
    cache, ids = KVCache(), prompt + cached.tokens[:5]
    a, _ = model.decode(torch.tensor([ids[:4]]), cache)
    for i in range(4, len(ids)):
        b, _ = model.decode(torch.tensor([ids[:i]]), None)
        assert torch.allclose(a, b, atol=1e-4)
        a, _ = model.decode(torch.tensor([[ids[i]]]), cache)


def test_act_halting_stops_early_and_recomputes_the_context():
    model, _ = tiny_model("recursive", "model.halting=act", "model.n_sup_inference=4")
    with torch.no_grad():
        model.q_head.bias.fill_(10.0)       # "my answer is right": halt after the first step
    g = generate_ids(model, [0, 1, 2], 3, temperature=0, halt=True)
    assert g.steps == [1, 1, 1] and g.cache_mb == 0
    with torch.no_grad():
        model.q_head.bias.fill_(-10.0)
    assert generate_ids(model, [0, 1, 2], 2, temperature=0, halt=True).steps == [4, 4]


def test_sampling_top_k_one_and_tiny_top_p_are_greedy():
    logits = torch.tensor([0.1, 2.0, 1.9, -1.0])
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits, 1.0, top_k=1, generator=g) for _ in range(20)} == {1}
    assert {sample_next(logits, 1.0, top_p=0.01, generator=g) for _ in range(20)} == {1}
    assert len({sample_next(logits, 5.0, generator=g) for _ in range(200)}) > 2


# --- presets ------------------------------------------------------------------------------------------------------

def _counts(preset: str):
    cfg = load_config(preset)
    with torch.device("meta"):
        model = build_model(cfg)
    total = sum(p.numel() for p in model.parameters())
    embed = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("embed.", "head.", "wte.", "lm_head.")))
    return cfg, total, total - embed


# Our exact counts (vocab 50304, untied embedding and head) and seed 002's table, which matches the
# non-embedding counts within 15 % for A-C and is 19 % under for D. Its effective depths drop T_recursion.
SEED_002 = {"lm-A": (152_765_185, 75_498_241, 70e6, 768), "lm-B": (283_378_689, 180_356_097, 180e6, 1280),
            "lm-C": (328_467_457, 225_444_865, 250e6, 2400), "lm-D": (749_078_017, 594_544_129, 500e6, 2880)}


@pytest.mark.parametrize("preset", sorted(SEED_002))
def test_seed_002_presets_build_with_their_parameter_counts_and_depth(preset):
    cfg, total, non_embed = _counts(preset)
    want_total, want_non_embed, seed_claim, depth = SEED_002[preset]
    assert (total, non_embed) == (want_total, want_non_embed)
    assert cfg.model.effective_depth == depth
    assert cfg.train.supervision == "summed" and cfg.train.ema_decay == 0.999
    if preset != "lm-D":
        assert abs(non_embed / seed_claim - 1) < 0.15


def test_gpt_baseline_is_seed_003_and_its_real_size():
    cfg, total, non_embed = _counts("gpt-baseline")
    m, t = cfg.model, cfg.train
    assert (m.arch, m.n_layer, m.n_head, m.n_embd, m.seq_len) == ("gpt", 8, 8, 512, 512)
    assert (t.batch_size, t.lr, t.warmup_steps, t.steps) == (192, 3e-4, 1000, 60000)
    assert t.lr * t.min_lr_ratio == pytest.approx(3e-5)
    assert t.schedule == "cosine" and t.keep_best
    with torch.device("meta"):
        model = build_model(cfg)
    assert model.core.blocks[0].mlp.fc.out_features == 2048                   # d_ff
    # seed 003 says ~50M: the blocks are 25.2M; with a 50304 vocab untied 76.7M (tied it would be 51.0M)
    assert non_embed == 25_165_824 and total == 76_677_120
    assert cfg.model.effective_depth == 8


def test_info_cli_reports_size_and_depth(capsys):
    assert main(["info", "gpt-baseline", "data.vocab_size=512", "model.n_embd=64"]) == 0
    out = capsys.readouterr().out
    assert "effective depth 8" in out and "params" in out


@pytest.mark.parametrize("bad", ["model.n_head=12", "model.n_kv_head=5"])
def test_seed_002_head_counts_that_do_not_divide_fail_in_one_line(bad, capsys):
    assert main(["info", "lm-B", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trm: error:") and "divisible" in err and "\n" not in err


def test_gpt_arch_refuses_recursion_settings():
    with pytest.raises(TrmError, match="no recursion"):
        tiny_model("gpt", "model.n_sup_train=4")


def test_gptconfig_round_trip():
    g = GPTConfig()
    cfg = g.to_config()
    assert GPTConfig.from_config(cfg) == g
    assert (cfg.model.seq_len, cfg.model.n_kv_head, cfg.data.vocab_size) == (1024, 4, 50304)
    small = GPTConfig(sequence_len=64, vocab_size=512, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, n_loops=2,
                      T_recursion=1, n_sup_train=3, n_sup_inference=5, activation_fn="relu2",
                      supervision_weight_base=3.0, improvement_reward_scale=0.5)
    cfg = small.to_config("lm-tiny")
    assert GPTConfig.from_config(cfg) == small
    assert cfg.train.supervision_weight_base == 3.0 and cfg.model.activation_fn == "relu2"


SEED_000 = {"moderate": (3.0, 0.5, 0.002, 0.02, 2, "true", 200),
            "aggressive": (5.0, 1.0, 0.001, 0.01, 2, "true", 200),
            "extreme": (10.0, 2.0, 0.0005, 0.005, 1, "false", 500)}
SEED_000_KEYS = ("supervision_weight_base", "improvement_reward_scale", "lr", "embedding_lr", "batch_size",
                 "compile", "steps")


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


@pytest.mark.parametrize("preset", sorted(SEED_000))
def test_seed_000_presets_change_only_what_the_seed_says(preset):
    base, cfg = _flat(load_config("lm-tiny").to_dict()), _flat(load_config(preset).to_dict())
    changed = {k for k in base if base[k] != cfg[k]} - {"name", "description"}
    assert changed <= {f"train.{k}" for k in SEED_000_KEYS}
    assert tuple(cfg[f"train.{k}"] for k in SEED_000_KEYS) == SEED_000[preset]


# --- training, evaluation, generation and compare on a tiny corpus ------------------------------------------------

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    build_text(TextDataConfig(n_docs=200, vocab_size=300, val_fraction=0.1), out_root=root)
    return root


RUN = ["data.n_docs=200", "data.vocab_size=300", "data.val_fraction=0.1", "model.seq_len=32",
       "model.n_embd=32", "model.n_head=4", "model.n_kv_head=2", "model.n_layer=1", "model.n_loops=1",
       "model.T_recursion=2", "model.n_sup_train=3", "model.n_sup_inference=3", "train.batch_size=8",
       "train.steps=40", "train.time_budget_s=0", "train.eval_interval=20", "train.eval_samples=16",
       "train.lr=0.01", "train.embedding_lr=0.01", "train.ema_decay=0", "train.keep_best=true"]


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    summaries = {}
    for name, extra in (("rec", []), ("gpt", GPT_TINY)):
        cfg = load_config("lm-tiny", RUN + extra)
        cfg.name = name
        summaries[name] = Trainer(cfg, out / name, data_root=data_root, quiet=True).fit()
    return out, summaries


def test_summed_supervision_trains_and_reports_val_loss_per_step(runs):
    out, summaries = runs
    ev = summaries["rec"]["eval"]
    assert len(ev["val_loss_per_step"]) == 3 and ev["val_loss"] == pytest.approx(ev["val_loss_per_step"][-1], abs=1e-4)
    assert ev["val_loss"] < 0.8 * torch.log(torch.tensor(320.0)).item()     # well below uniform over the table
    assert ev["refinement_pct"] == pytest.approx(100 * (ev["first_step_loss"] - ev["val_loss"]) / ev["first_step_loss"])
    assert "entropy bound" in ev["refinement"] and ev["entropy_bound"] > 0
    records = [json.loads(line) for line in (out / "rec" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert train[-1]["loss"] < train[0]["loss"] and "first_step_loss" in train[-1]
    assert (out / "rec" / "best" / "checkpoints").is_dir()          # best-val-loss checkpoint kept


def test_vocab_mismatch_with_the_shards_is_an_error(data_root):
    cfg = load_config("lm-tiny", RUN + ["model.vocab_size=64"])
    with pytest.raises(TrmError, match="do not match"):
        get_task("lm").prepare(cfg, data_root)


def test_generate_and_compare_cli(runs, data_root, capsys, tmp_path):
    out, _ = runs
    for name in ("rec", "gpt"):
        assert main(["generate", str(out / name), "--data-root", str(data_root), "--prompt", "A story",
                     "--max-new-tokens", "8", "--seed", "1", "--no-stop"]) == 0
        text = capsys.readouterr().out
        assert text.startswith("A story") and "tokens/s" in text
    assert main(["generate", str(out / "rec" / "best"), "--data-root", str(data_root), "--json",
                 "--max-new-tokens", "4", "--no-stop", "--temperature", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["new_tokens"] == 4 and result["steps_per_token"] == 3 and result["cache"]
    assert main(["generate", str(out / "gpt"), "--data-root", str(data_root), "--max-new-tokens", "100"]) == 2
    assert "context" in capsys.readouterr().err
    plot = tmp_path / "cmp.png"
    assert main(["compare", str(out / "rec"), str(out / "gpt"), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "refinement" in text and "baseline gpt" in text and "entropy bound" in text and plot.stat().st_size > 0


def test_flops_per_token_counts_the_recursion(runs):
    out, _ = runs
    rec, cfg = load(out / "rec")
    gpt, gcfg = load(out / "gpt")
    # same blocks and head; the recursive LM runs 3 steps x (2 no-grad + 2x3 backprop'd core calls) + 3 heads
    assert flops_per_token(cfg, **matmul_params(rec)) > 5 * flops_per_token(gcfg, **matmul_params(gpt))


def _widened(run: dict, name: str, **eval_changes) -> dict:
    """A copy of a loaded run with a new name, big numbers (wider than the table's old fixed widths) and eval edits."""
    s = run["summary"]
    summary = {**s, "params": 1_234_567_890, "train_time_s": 12_345_678.0, "eval": {**s["eval"], **eval_changes}}
    return {**run, "name": name, "summary": summary}


def test_compare_table_columns_line_up_whatever_the_widths(runs):
    import re

    from trmlab.studies.compare import load_run, table
    out, _ = runs
    short = load_run(out / "rec")
    wide = _widened(load_run(out / "gpt"), "a-run-name-much-longer-than-eighteen", ppl=123456.78,
                    entropy_bound_bits_per_byte=None, gap_to_bound=None)
    header, *body = table([short, wide]).splitlines()
    cells = [[m.span() for m in re.finditer(r"\S+", line)] for line in body]   # values hold no spaces
    assert len(cells[0]) == len(cells[1]) == 14
    assert [c[0] for c in cells[0][:2]] == [c[0] for c in cells[1][:2]]       # text columns: same starts
    assert [c[1] for c in cells[0][2:]] == [c[1] for c in cells[1][2:]]       # number columns: same ends
    for _, end in cells[0][2:]:                                                # ... and the header's labels end there
        assert header[end - 1] != " " and (end == len(header) or header[end] == " ")


def test_compare_shows_each_run_against_its_own_entropy_bound(runs):
    from trmlab.studies.compare import load_run, verdicts
    out, _ = runs
    rec, gpt = load_run(out / "rec"), load_run(out / "gpt")
    shared = [n for n in verdicts([rec, gpt]) if n.startswith("corpus entropy bound")]
    assert len(shared) == 1 and f"{rec['summary']['eval']['entropy_bound']:.4f}" in shared[0]
    other = _widened(gpt, "other-corpus", entropy_bound=9.8765, entropy_bound_bits_per_byte=4.321)
    lines = [n for n in verdicts([rec, other]) if n.startswith("corpus entropy bound")]
    assert len(lines) == 2
    assert "of rec:" in lines[0] and f"{rec['summary']['eval']['entropy_bound']:.4f}" in lines[0]
    assert "of other-corpus:" in lines[1] and "9.8765" in lines[1] and "4.3210 bits/byte" in lines[1]


# --- a run stands alone; generate and info refuse or report honestly ----------------------------------------------

def _generate_json(capsys, path, *extra):
    rc = main(["generate", str(path), "--json", "--max-new-tokens", "6", "--no-stop", "--threads", "1", *extra])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else None), err.strip()


def test_run_generates_without_its_data_directory(runs, data_root, capsys, tmp_path):
    import shutil
    out, _ = runs
    data_tok = next(data_root.glob("text-*/tokenizer.json")).read_bytes()
    for name in ("rec", "gpt"):
        assert (out / name / "tokenizer.json").read_bytes() == data_tok       # copied at training
    assert not (out / "rec" / "best" / "tokenizer.json").exists()           # best/ and checkpoints use the run's
    moved = tmp_path / "elsewhere" / "rec"                                    # "another machine": no data dir
    shutil.copytree(out / "rec", moved)
    gone = ["--data-root", str(tmp_path / "no-data")]
    step = next((moved / "checkpoints").glob("step_*"))
    for path in (moved, moved / "best", step, next((moved / "best" / "checkpoints").glob("step_*"))):
        rc, result, err = _generate_json(capsys, path, *gone)
        assert rc == 0, err
        assert result["new_tokens"] == 6 and result["text"]
    # without the run's copies it needs the data directory again: a one-line error, then the fallback works
    (moved / "tokenizer.json").unlink()
    rc, _, err = _generate_json(capsys, moved, *gone)
    assert rc == 2 and "tokenizer not found" in err and "\n" not in err
    rc, result, _ = _generate_json(capsys, moved, "--data-root", str(data_root))
    assert rc == 0 and result["new_tokens"] == 6


def test_run_with_its_own_tokenizer_file_generates_after_that_file_is_gone(data_root, capsys, tmp_path):
    import shutil
    mine = tmp_path / "my-tokenizer.json"          # a user's tokenizer: data.tokenizer=PATH
    shutil.copyfile(next(data_root.glob("text-*/tokenizer.json")), mine)
    cfg = load_config("lm-tiny", RUN + [f"data.tokenizer={mine}", "train.steps=2", "train.eval_interval=0"])
    Trainer(cfg, tmp_path / "run", data_root=tmp_path / "data", quiet=True).fit()
    mine.unlink()
    shutil.rmtree(tmp_path / "data")
    rc, result, err = _generate_json(capsys, tmp_path / "run")
    assert rc == 0 and result["new_tokens"] == 6, err


@pytest.mark.parametrize("device", ["cuda", "mps", "cuda:0"])
def test_generate_on_a_missing_device_is_a_one_line_error(runs, capsys, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)            # the same on a GPU machine
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    out, _ = runs
    rc, _, err = _generate_json(capsys, out / "gpt", "--device", device)
    assert rc == 2 and err.startswith("trm: error:") and f"'{device}' is not available" in err and "\n" not in err
    rc, _, err = _generate_json(capsys, out / "gpt", "--device", "tpu9")
    assert rc == 2 and "not a device" in err and "\n" not in err


@pytest.mark.parametrize("flag,value", [("--top-p", "0"), ("--top-p", "1.5"), ("--top-p", "nan"),
                                        ("--temperature", "-1"), ("--temperature", "inf"), ("--top-k", "-1"),
                                        ("--n-sup", "0"), ("--max-new-tokens", "-1"), ("--threads", "-2"),
                                        ("--cache", "lazy"), ("--cache", "")])
def test_generate_refuses_bad_sampling_options_naming_the_flag(runs, capsys, flag, value):
    out, _ = runs
    rc, _, err = _generate_json(capsys, out / "rec", flag, value)
    assert rc == 2 and err.startswith(f"trm: error: {flag}") and "must" in err and "\n" not in err


def test_generate_accepts_the_edges_of_the_sampling_options(runs, capsys):
    out, _ = runs
    rc, result, err = _generate_json(capsys, out / "rec", "--top-p", "1", "--top-k", "0", "--temperature", "0",
                                     "--n-sup", "1")
    assert rc == 0 and result["n_sup_inference"] == 1 and result["steps_per_token"] == 1, err
    rc = main(["generate", str(out / "rec"), "--json", "--max-new-tokens", "0", "--prompt", "A story"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["new_tokens"] == 0 and result["text"] == "A story"
    model, _ = tiny_model()
    with pytest.raises(TrmError, match="top-p"):                             # the library call checks too
        generate_ids(model, [0, 1], 3, top_p=0.0)


def _info(capsys, *args) -> str:
    assert main(["info", *args]) == 0
    return capsys.readouterr().out


def test_info_counts_lm_params_with_the_real_vocab_and_without_embeddings(runs, capsys, tmp_path):
    # 200 documents cannot fill a 2048-token BPE: the trained tokenizer is smaller than configured
    small = ["data.n_docs=200", "data.val_fraction=0.1"]
    meta = json.loads((build_text(TextDataConfig(n_docs=200, val_fraction=0.1), out_root=tmp_path)
                       / "metadata.json").read_text())
    real = -(-meta["vocab_size"] // 64) * 64
    assert real < 2048

    def counts(*overrides):
        model = build_model(load_config("lm-tiny", small + list(overrides)))
        total = sum(p.numel() for p in model.parameters())
        embed = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("embed.", "head.")))
        return total, total - embed

    text = _info(capsys, "lm-tiny", *small, "--data-root", str(tmp_path))
    total, non_embed = counts(f"model.vocab_size={real}")
    assert f"params {total:,}" in text and f"non-embedding {non_embed:,}" in text and f"vocab {real}" in text
    assert "puzzle" not in text
    text = _info(capsys, "lm-tiny", *small, "--data-root", str(tmp_path / "none"))   # not built: configured size
    assert f"params {counts('model.vocab_size=2048')[0]:,}" in text and "may be smaller" in text
    out, _ = runs
    model, cfg = load(out / "gpt")                                            # a run: the size it was trained with
    text = _info(capsys, str(out / "gpt"))
    assert f"params {sum(p.numel() for p in model.parameters()):,}" in text
    assert f"vocab {cfg.model.vocab_size} as trained" in text


def test_info_shows_the_puzzle_table_only_when_there_is_one(capsys):
    assert "without puzzle-embedding table" in _info(capsys, "sudoku", "model.num_puzzle_ids=10",
                                                     "model.puzzle_emb_len=2")
    assert "puzzle" not in _info(capsys, "sudoku", "model.num_puzzle_ids=0")


def test_gptconfig_explicit_overrides_win_over_its_fields():
    g = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=128)
    cfg = g.to_config("lm-tiny", ["train.improvement_reward_scale=0", "model.n_layer=4", "data.vocab_size=512",
                                  "n_loops=1"])
    assert cfg.train.improvement_reward_scale == 0 and cfg.model.n_layer == 4 and cfg.model.n_loops == 1
    assert cfg.data.vocab_size == 512 and cfg.model.n_embd == 128          # fields nobody overrode still apply
    assert g.to_config("lm-tiny", ["model.vocab_size=1024"]).model.vocab_size == 1024


def test_gptconfig_table_follows_the_tokenizer_like_trm_train():
    # model.vocab_size=0 is what lets the trainer size the table from the tokenizer the data really builds;
    # pinning it at 50304 made the docs' lm-A snippet twice the size of `trm train lm-A`
    cfg = GPTConfig().to_config("lm-A")
    assert cfg.model.vocab_size == 0 and cfg.data.vocab_size == 50304
    assert cfg.to_dict() == load_config("lm-A").to_dict()


def test_generate_shared_cache_option(runs, capsys):
    out, _ = runs
    rc, exact, err = _generate_json(capsys, out / "rec")
    rc2, shared, err2 = _generate_json(capsys, out / "rec", "--cache", "shared")
    assert rc == rc2 == 0 and (exact["cache_kind"], shared["cache_kind"]) == ("exact", "shared"), err + err2
    # n_sup 3 x T 2 recursions share one recursion's slots
    assert exact["kv_cache_bytes"] == 6 * shared["kv_cache_bytes"] > 0
    for extra in (["--cache", "shared", "--no-cache"], ["--cache", "shared"]):
        rc, _, err = _generate_json(capsys, out / ("gpt" if len(extra) == 2 else "rec"), *extra)
        assert rc == 2 and err.startswith("trm: error: ") and "\n" not in err
        assert ("plain GPT" if len(extra) == 2 else "contradict") in err


def test_generate_n_sup_on_a_plain_gpt_is_a_one_line_error(runs, capsys):
    out, _ = runs
    rc, _, err = _generate_json(capsys, out / "gpt", "--n-sup", "3")
    assert rc == 2 and "plain GPT" in err and "\n" not in err
    rc, result, _ = _generate_json(capsys, out / "rec", "--n-sup", "3")   # the recursive LM takes it
    assert rc == 0 and result["new_tokens"] == 6
