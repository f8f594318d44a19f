"""Seed 001 phases 2-3: latent pairs, the latent TRM through the one trainer, injection, rewards, GRPO glue."""

import json
import math
import warnings
from dataclasses import replace

import pytest
import torch
import yaml

from trmlab.config import load_config
from trmlab.errors import TrmError
from trmlab.llm.checker import accuracy, check_answer, final_answer, safe_check
from trmlab.llm.grpo import (CorrectnessReward, RLConfig, checkpointing_args, group_advantages, run_grpo,
                             trl_deprecations_silenced)

# An untrained tiny-arith LLM and a small TRM: the whole pipeline in seconds (numbers are meaningless here).
SMALL = ["data.llm_steps=0", "data.n_train=48", "data.n_test=8", "data.max_think_tokens=6",
         "data.max_answer_tokens=3", "model.n_embd=32", "model.n_head=2", "model.n_layer=1", "model.n_loops=1",
         "model.T_recursion=2", "model.n_sup_train=2", "model.n_sup_inference=3", "train.steps=6",
         "train.batch_size=8", "train.warmup_steps=1", "train.log_interval=1"]


def raising_checker(completion, answer):
    if answer in ("0", "1", "2", "3", "4"):
        raise ValueError("checker bug")
    return check_answer(completion, answer)


@pytest.fixture(scope="module")
def phase2(tmp_path_factory):
    """Data built from the untrained LLM + a phase-2 run trained on it: (cfg, run_dir, data_root, summary)."""
    from trmlab.train.trainer import train
    root = tmp_path_factory.mktemp("latent")
    cfg = load_config("latent-tiny", SMALL)
    summary = train(cfg, root / "runs" / "p2", data_root=root / "data", quiet=True)
    return cfg, root / "runs" / "p2", root / "data", summary


# ------------------------------------------------------------------------------------------ pipeline
def test_phase2_pipeline_end_to_end(phase2):
    cfg, run_dir, data_root, s = phase2
    m = s["eval"]
    assert len(m["cosine_per_step"]) == cfg.model.n_sup_inference
    assert all(-1 <= c <= 1 for c in m["cosine_per_step"])
    assert m["cosine_step1"] == m["cosine_per_step"][0] and -1 <= m["centered_cosine"] <= 1
    assert -1 <= m["mean_target_cosine"] <= 1
    for key in ("latent_acc", "mean_latent_acc", "nothink_acc", "think_acc", "oracle_acc", "oracle_raw_acc"):
        assert 0.0 <= m[key] <= 1.0
    assert m["n"] == 8
    (data_dir,) = [p for p in data_root.glob("latent-*") if p.is_dir()]
    meta = json.loads((data_dir / "metadata.json").read_text())
    assert meta["layer"] == 2 and meta["d_model"] == 128 and meta["d_compressed"] == 32
    from safetensors.torch import load_file
    test = load_file(str(data_dir / "test.safetensors"))
    assert test["x"].shape == (8, 20, 32) and test["target"].shape == (8, 3, 32)
    assert set(test["think"].tolist()) <= {-1, 0, 1}
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("cosine" in r for r in records)    # the task's own training metric reaches the log


def test_phase2_loss_decreases_on_fixed_batch(phase2):
    from trmlab.tasks import get_task
    cfg, _, data_root, _ = phase2
    task = get_task("latent")
    data = task.prepare(cfg, data_root)
    torch.manual_seed(0)
    model = task.build_model(cfg)
    batch = task.batch(data, task.sampler(data, 0), 0, 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = task.losses(model.step(batch), batch, cfg)[0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_grpo_latent_mode_logs_and_is_reproducible(phase2, tmp_path):
    cfg, run_dir, data_root, _ = phase2
    rl = RLConfig(steps=2, prompts_per_step=2, num_generations=4, eval_interval=2, eval_samples=4, seed=3)
    runs = []
    for name in ("a", "b"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s = run_grpo(cfg, rl, tmp_path / name, run_dir, data_root, log=lambda m: None)
        # no library deprecation noise on the console: we use the current API, and filter what TRL itself triggers
        noise = [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
        assert noise == []
        records = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs.append(records)
        assert s["injected_rows"] > 0                      # the latent reached the policy's forward passes
        assert (tmp_path / name / "model" / "config.json").exists()
    rewards = [[r for r in recs if "reward" in r] for recs in runs]
    assert len(rewards[0]) == 2 and [r["step"] for r in rewards[0]] == [1, 2]
    assert [r["eval"]["acc"] for r in runs[0] if "eval" in r] and runs[0][0]["step"] == 0
    strip = [[{k: v for k, v in r.items() if k != "step_time"} for r in rec] for rec in rewards]
    assert strip[0] == strip[1]                            # same seed, same run
    evals = [[r["eval"] for r in recs if "eval" in r] for recs in runs]
    assert evals[0] == evals[1] and all(0 <= e["reward"] <= 1 for e in evals[0])   # held-out expected reward
    # the run contract: config.yaml (the phase-2 config + its rl section), summary.json with the metric's direction
    from trmlab.config import from_dict
    from trmlab.studies.results import gather
    a = tmp_path / "a"
    saved = from_dict(yaml.safe_load((a / "config.yaml").read_text()))
    assert saved.rl == replace(rl, phase2_run=str(run_dir)) and saved.task == "latent" and saved.data == cfg.data
    assert not (a / "rl_config.json").exists() and not (a / "summary.json.tmp").exists()
    summary = json.loads((a / "summary.json").read_text())
    assert (summary["metric"], summary["lower_is_better"], summary["eval"]) == ("acc", False, evals[0][-1])
    row = gather(tmp_path)[0].set_index("exp_id").loc["a"]
    assert row["status"] == "done" and row["score"] == evals[0][-1]["acc"] and row["rl.steps"] == 2
    # never over another run: the phase-2 run's own directory is refused before anything is written
    before = (run_dir / "config.yaml").read_text()
    with pytest.raises(TrmError, match="holds another run"):
        run_grpo(cfg, rl, run_dir, run_dir, data_root, log=lambda m: None)
    assert (run_dir / "config.yaml").read_text() == before and (run_dir / "metrics.jsonl").exists()
    # a finished RL run is replaced only with overwrite, and only while it holds nothing a run does not write
    with pytest.raises(TrmError, match="finished RL run; pass --overwrite"):
        run_grpo(cfg, rl, a, run_dir, data_root, log=lambda m: None)
    (a / "notes.txt").write_text("mine")
    with pytest.raises(TrmError, match="not a trmlab run"):
        run_grpo(cfg, rl, a, run_dir, data_root, log=lambda m: None, overwrite=True)
    assert (a / "notes.txt").read_text() == "mine" and (a / "summary.json").exists()
    (a / "notes.txt").unlink()
    (a / "model" / "stale.bin").write_text("old")
    run_grpo(cfg, rl, a, run_dir, data_root, log=lambda m: None, overwrite=True)
    assert not (a / "model" / "stale.bin").exists() and json.loads((a / "summary.json").read_text())["eval"]


def test_cli_latent_data_and_train(phase2, capsys):
    from trmlab.cli import main
    cfg, run_dir, data_root, _ = phase2
    assert main(["latent", "data", "latent-tiny", *SMALL, "--data-root", str(data_root)]) == 0
    assert "full thinking" in capsys.readouterr().out
    runs = run_dir.parent
    assert main(["latent", "train", "latent-tiny", *SMALL, "train.steps=2", "--name", "cli", "--runs-dir", str(runs),
                 "--data-root", str(data_root), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "cosine to the target by supervision step" in out and "latent thinking (TRM)" in out
    assert main(["latent", "train", "sudoku", "--runs-dir", str(runs)]) == 2


# ------------------------------------------------------------------------------------------ injection
def _tiny_llm():
    from trmlab.llm.tiny import TinyLLMSpec, build_model, build_tokenizer
    tok = build_tokenizer()
    return build_model(TinyLLMSpec(hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64), tok).eval(), tok


def _capture(model, layer, ids, mask):
    from trmlab.llm.inject import decoder_layers, position_ids
    box = {}
    h = decoder_layers(model)[layer - 1].register_forward_hook(lambda m, a, o: box.__setitem__("h", o.detach()))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask))
    h.remove()
    return box["h"]


def test_injection_overwrites_exactly_the_span():
    from trmlab.llm.inject import Injection, KeyedInjection, hidden_at
    model, tok = _tiny_llm()
    enc = tok(["<|im_start|>user\n1+2<|im_end|>\n<think>\n\n</think>\n", "<think>\n\n</think>\n"],
              return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    lat = torch.randn(2, 3, 32)
    plain = _capture(model, 1, ids, mask)
    with Injection(model, 1, lat):
        injected = _capture(model, 1, ids, mask)
        after = _capture(model, 2, ids, mask)
    assert torch.allclose(injected[:, -3:], lat) and torch.allclose(injected[:, :-3], plain[:, :-3])
    assert not torch.allclose(after[:, -1], _capture(model, 2, ids, mask)[:, -1])  # the next block sees it
    assert torch.allclose(hidden_at(model, ids, mask, 1), plain)
    # keyed: only the registered prompt (row 0) is injected, found by its own tokens under left padding
    close = tok("\n</think>\n", add_special_tokens=False)["input_ids"]
    keyed = KeyedInjection(1, close, tok.pad_token_id, 3)
    keyed.register(ids[0][mask[0].bool()].tolist(), lat[0])
    keyed.attach(model)
    out = _capture(model, 1, ids, mask)
    keyed.detach()
    assert torch.allclose(out[0, -3:], lat[0]) and torch.allclose(out[1], plain[1]) and keyed.hits == 1


def test_layer_must_reach_the_answer():
    from trmlab.llm.inject import resolve_layer
    assert resolve_layer(0, 36) == 18 and resolve_layer(3, 4) == 3
    for bad in (-1, 4, 7):
        with pytest.raises(TrmError, match="out of range"):
            resolve_layer(bad, 4)


# ------------------------------------------------------------------------------------------ rewards
def test_answer_checker():
    assert final_answer("<think>\n3+4=7\n</think>\n7") == "7"
    assert check_answer("3+5=8\n8*2=6\n\n6", "6")            # think tags stripped: last number wins
    assert check_answer("so the answer is 1,234.", "1234")
    assert not check_answer("", "3") and not check_answer("<think>\n9\n</think>\n", "9")
    assert check_answer("Paris", "paris") and not check_answer("Rome", "paris")


def test_reward_correct_incorrect_unparseable_and_raising_checker():
    logged = []
    reward = CorrectnessReward(check_answer, logged.append)
    assert reward(["p"] * 3, ["7", "8", "no answer here"], ["7", "7", "7"]) == [1.0, 0.0, 0.0]
    assert reward.skipped == 0 and not logged
    chat = [[{"role": "assistant", "content": "5"}]]            # conversational completions too
    assert reward(["p"], chat, ["5"]) == [1.0]
    bad = CorrectnessReward(raising_checker, logged.append)
    assert bad(["p"] * 3, ["1", "9", "3"], ["1", "9", "3"]) == [None, 1.0, None]
    assert bad.skipped == 2 and len(logged) == 2 and "sample skipped" in logged[0]
    assert safe_check(raising_checker, "2", "2", logged.append) is None
    assert accuracy([True, False, None, True]) == (2 / 3, 3, 1)


def test_group_advantages_known_groups():
    r = torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1])
    adv = group_advantages(r, 4)
    s = 3 ** 0.5 / 2   # TRL's std is unbiased: std([1,0,0,1]) = 1/sqrt(3), so (r - mean)/std = +-sqrt(3)/2
    assert torch.allclose(adv[:4], torch.tensor([s, -s, -s, s]), atol=1e-3)
    assert torch.equal(adv[4:], torch.zeros(4))                # equal rewards: no signal
    pop = group_advantages(r, 4, unbiased=False)               # with the population std: exactly +-1
    assert torch.allclose(pop[:4], torch.tensor([1.0, -1, -1, 1]), atol=1e-3)
    assert torch.allclose(group_advantages(torch.tensor([0.0, 1, 1, 1]), 4).sum(), torch.tensor(0.0), atol=1e-5)


def test_group_advantages_match_trl(tmp_path):
    """Our formula is what TRL's GRPOTrainer really computes (a change in TRL fails here, not silently)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
    model, tok = _tiny_llm()
    pattern = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]

    def fixed(prompts, completions, **kw):
        return pattern[:len(completions)]

    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=2, report_to="none", use_cpu=True, disable_tqdm=True, beta=0.0,
                      **checkpointing_args(False))
    trainer = GRPOTrainer(model=model, reward_funcs=fixed, args=args, processing_class=tok,
                          train_dataset=Dataset.from_list([{"prompt": "a"}, {"prompt": "b"}]))
    with trl_deprecations_silenced():
        out = trainer._generate_and_score_completions([{"prompt": "a"}] * 4 + [{"prompt": "b"}] * 4)
    assert torch.allclose(out["advantages"].float(), group_advantages(torch.tensor(pattern), 4), atol=1e-4)


# ------------------------------------------------------------------------------------------ bad input
def test_mismatched_compressor_is_one_line_error(tmp_path):
    from trmlab.llm.latent_pairs import build_latent_pairs
    from trmlab.models.compressor import DimensionCompressor, save_compressor
    save_compressor(tmp_path / "c", DimensionCompressor(64, 16))
    cfg = load_config("latent-tiny", SMALL + [f"data.compressor={tmp_path / 'c'}", "data.d_compressed=16"])
    with pytest.raises(TrmError, match="D=64, but LLM tiny-arith has hidden size 128"):
        build_latent_pairs(cfg.data, tmp_path / "data")
    cfg = load_config("latent-tiny", SMALL + [f"data.compressor={tmp_path / 'c'}", "data.d_compressed=8"])
    with pytest.raises(TrmError, match="D'=16"):
        cfg.data.llm = "tiny-arith"
        from trmlab.llm.latent_pairs import checkpoint_compressor
        checkpoint_compressor(cfg.data, 64, 2)
    assert not (tmp_path / "data" / "llm").exists()           # failed before loading or training any LLM


def test_dataset_without_needed_fields(tmp_path):
    from trmlab.llm.latent_pairs import build_latent_pairs
    f = tmp_path / "p.jsonl"
    f.write_text('{"text": "2+2", "answer": "4"}\n' * 4)
    cfg = load_config("latent-tiny", SMALL + [f"data.source={f}"])
    with pytest.raises(TrmError, match="lacks the field.*question.*thinking"):
        build_latent_pairs(cfg.data, tmp_path / "data")
    f.write_text("".join(json.dumps({"q": f"{i}+1", "t": f"{i}+1={i + 1}", "a": str(i + 1)}) + "\n"
                         for i in range(6)))
    from trmlab.llm.latent_pairs import problems
    cfg = load_config("latent-tiny", SMALL + [f"data.source={f}", "data.question_field=q", "data.thinking_field=t",
                                              "data.answer_field=a", "data.n_test=2"])
    p = problems(cfg.data)
    assert len(p["test"]) == 2 and len(p["train"]) == 4 and p["test"][0].thinking.endswith(p["test"][0].answer)


def test_checker_that_raises_skips_samples_in_evaluation(phase2):
    from trmlab.api import load
    from trmlab.tasks import get_task
    cfg, run_dir, data_root, _ = phase2
    model, _ = load(run_dir)
    task = get_task("latent")
    data = task.prepare(cfg, data_root)
    cfg.data.checker = f"{__name__}:raising_checker"
    try:
        m = task.evaluate(model, data, cfg, "cpu")
    finally:
        cfg.data.checker = ""
    answers = [json.loads(x)["answer"] for x in (data.path / "test.jsonl").read_text().splitlines()]
    assert m["latent_skipped"] == sum(a in "01234" for a in answers)


def test_smollm3_preset_builds_from_config_and_needs_weights(monkeypatch, tmp_path):
    from trmlab.api import build_model
    from trmlab.cli import main
    from trmlab.llm.pretrained import SMOLLM3, llm_config, llm_dims, meta_model
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))       # an empty cache: the weights are certainly absent
    cfg = load_config("latent-smollm3")
    assert cfg.data.d_compressed == 256
    config = llm_config(SMOLLM3)
    assert llm_dims(config) == (2048, 36)
    llm = meta_model(config)
    assert 3.0e9 < sum(p.numel() for p in llm.parameters()) < 3.2e9 and next(llm.parameters()).is_meta
    trm = build_model(cfg)
    assert trm.head.out_features == 256
    from trmlab.llm.latent_pairs import build_latent_pairs
    with pytest.raises(TrmError, match="weights of LLM HuggingFaceTB/SmolLM3-3B are not available"):
        build_latent_pairs(load_config("latent-smollm3", ["data.compressor=pca"]).data, tmp_path / "data")
    # the preset's phase-1 compressor is absent too: the CLI says so in one line, exit 2
    assert main(["latent", "data", "latent-smollm3", "--data-root", str(tmp_path / "data")]) == 2


# ------------------------------------------------------------------------------------------ phase-2 loss
def test_contrastive_loss_punishes_the_mean_thought():
    from trmlab.tasks.latent import contrastive_loss
    torch.manual_seed(0)
    target = torch.randn(8, 3, 16) + 5.0              # a large shared component, as on the offline task
    mean = target.mean(0, keepdim=True).expand_as(target)
    right = contrastive_loss(target.clone(), target)
    collapsed = contrastive_loss(mean.clone(), target)
    assert right.shape == (8,) and right.mean() < 0.1
    assert torch.allclose(collapsed, torch.full((8,), math.log(8)), atol=1e-4)   # the mean: chance, log B


def test_training_only_fields_do_not_rebuild_the_data():
    from trmlab.llm.latent_pairs import pairs_dir
    base = load_config("latent-tiny").data
    assert pairs_dir(base, "d") == pairs_dir(load_config("latent-tiny", ["data.loss=contrastive",
                                                                         "data.halt_cosine=0.8"]).data, "d")
    assert pairs_dir(base, "d") != pairs_dir(load_config("latent-tiny", ["data.n_test=10"]).data, "d")


# ------------------------------------------------------------------------------------------ any HF causal LM
def test_any_local_hf_model_and_chat_templates(tmp_path):
    """A foreign HF model directory (Llama with GQA, byte tokenizer, no chat template): its D and depth come from
    its config; a template that opens <think> itself (Qwen3 / DeepSeek-R1 style) is not opened twice."""
    from trmlab.llm.sources import build_byte_tokenizer, save_tiny_random_model
    from trmlab.llm.latent_pairs import build_latent_pairs
    from trmlab.llm.chat import ChatFormat
    from trmlab.llm.problems import Problem
    llm = save_tiny_random_model(tmp_path / "llm", hidden_size=48, num_layers=3, num_heads=4)
    cfg = load_config("latent-tiny", SMALL + [f"data.llm={llm}", "data.layer=0", "data.d_compressed=8"])
    meta = json.loads((build_latent_pairs(cfg.data, tmp_path / "data", log=lambda m: None)
                       / "metadata.json").read_text())
    assert (meta["d_model"], meta["n_layers"], meta["layer"], meta["d_compressed"]) == (48, 3, 1, 8)
    tok = build_byte_tokenizer()
    p = Problem("1+2", "1+2=3", "3")
    assert ChatFormat(tok).nothink(p) == "Question: 1+2\n<think>\n\n</think>\n"     # no template: plain prompt
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}<|im_start|>assistant\n<think>\n")
    assert ChatFormat(tok).full(p).count("<think>") == 1 and ChatFormat(tok).full(p).endswith("1+2=3\n</think>\n")


def test_non_utf8_problem_file_and_truncated_compressor_are_one_line_errors(tmp_path):
    from trmlab.llm.latent_pairs import build_latent_pairs
    from trmlab.llm.problems import load_problems
    from trmlab.models.compressor import DimensionCompressor, save_compressor
    for name, body in (("p.jsonl", b'{"question": "1+1", "thinking": "ok", "answer": "2"}\n{"question": "\xff"}\n'),
                       ("p.json", b'[{"question": "\xe9"}]')):
        f = tmp_path / name
        f.write_bytes(body)
        with pytest.raises(TrmError, match=rf"{name}:\d+: not UTF-8"):
            load_problems(str(f), "train", 0)
    tensors = save_compressor(tmp_path / "c", DimensionCompressor(128, 16)) / "model.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:40])                        # a copy cut short
    cfg = load_config("latent-tiny", SMALL + [f"data.compressor={tmp_path / 'c'}", "data.d_compressed=16"])
    with pytest.raises(TrmError, match=r"c/model.safetensors.*(cut short|corrupt)"):
        build_latent_pairs(cfg.data, tmp_path / "data")
    assert not (tmp_path / "data" / "llm").exists()


# ------------------------------------------------------------------------------------------ step-wise targets
def test_line_targets_are_the_states_after_each_worked_line(tmp_path):
    """data.supervise=lines: target_lines[i, k-1] is the compressed state after the first k lines of trace i, read
    afresh from the LLM here; from the trace's last line on it is the whole trace's target."""
    from safetensors.torch import load_file

    from trmlab.llm.chat import ChatFormat, thinking_lines
    from trmlab.llm.latent_pairs import build_latent_pairs, extract
    from trmlab.llm.pretrained import load_llm
    from trmlab.llm.problems import Problem
    from trmlab.llm.sources import save_tiny_random_model
    from trmlab.models.compressor import load_compressor
    llm = save_tiny_random_model(tmp_path / "llm", hidden_size=48, num_layers=3, num_heads=4)
    cfg = load_config("latent-tiny", SMALL + [f"data.llm={llm}", "data.layer=1", "data.d_compressed=8",
                                              "data.supervise=lines"])
    out = build_latent_pairs(cfg.data, tmp_path / "data", log=lambda m: None)
    test = load_file(str(out / "test.safetensors"))
    probs = [Problem(**json.loads(x)) for x in (out / "test.jsonl").read_text().splitlines()]
    n_lines = [len(thinking_lines(p)) for p in probs]
    lines = test["target_lines"]
    assert lines.shape == (8, 4, 3, 8) and min(n_lines) < 4      # S = the longest trace; shorter ones padded
    model, tok = load_llm(str(llm), log=lambda m: None)
    comp = load_compressor(out / "compressor")[0]
    scale = json.loads((out / "metadata.json").read_text())["scale"]
    fmt = ChatFormat(tok)
    for i, p in enumerate(probs):
        assert torch.allclose(lines[i, n_lines[i] - 1:], test["target"][i].expand_as(lines[i, n_lines[i] - 1:]),
                              atol=1e-5)
        for k in range(1, n_lines[i]):
            y, _ = extract(model, tok, [fmt.after_lines(p, k)], 1, 3, 1)
            assert torch.allclose(lines[i, k - 1], comp.compress(y[0]) / scale, atol=1e-4)
            assert not torch.allclose(lines[i, k - 1], test["target"][i], atol=1e-3)


def test_step_target_and_halting_against_the_final_state():
    """Supervision step k trains towards line k+1's state (the last line's past the end), while ACT's "correct"
    still means the final thought is reached."""
    from trmlab.recursion import StepOutput
    from trmlab.tasks import get_task
    from trmlab.tasks.latent import step_target
    lines = torch.randn(3, 4, 2, 5)
    final = lines[:, -1]
    batch = {"target_lines": lines, "target": final, "sup_step": torch.tensor([0, 2, 9])}
    picked = step_target(batch)
    assert torch.equal(picked[0], lines[0, 0]) and torch.equal(picked[1], lines[1, 2])
    assert torch.equal(picked[2], lines[2, 3])
    cfg = load_config("latent-tiny", ["data.supervise=lines", "data.loss=cosine"])
    out = StepOutput(logits=final.clone(), q_logit=torch.zeros(3), carry=None)
    loss, correct, metrics = get_task("latent").losses(out, batch, cfg)
    assert correct.tolist() == [True, True, True]                 # the final thought: halt
    assert torch.allclose(metrics["cosine"], torch.ones(3))
    assert loss[2] < loss[0] and metrics["step_cosine"][0] < 0.99   # yet step 0 is trained towards line 1


def test_phase2_trains_step_by_step(tmp_path):
    """The trainer hands each sample's supervision step to the task, in both supervision modes."""
    from trmlab.train.trainer import train
    for mode in ("per_step", "summed"):
        cfg = load_config("latent-tiny", SMALL + ["data.supervise=lines", f"train.supervision={mode}",
                                                  "train.eval_interval=0"])
        train(cfg, tmp_path / mode, data_root=tmp_path / "data", quiet=True)
        records = [json.loads(x) for x in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        assert any("step_cosine" in r for r in records)
