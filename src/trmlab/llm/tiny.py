"""The offline LLM: a small Llama trained from scratch on the synthetic task on CPU, cached with save_pretrained.

Why it exists: phases 2 and 3 need an LLM whose thinking really helps, and no such model can be downloaded here.
``ensure_tiny_llm(spec, cache_root)`` trains one once (a few minutes on 2 CPU cores for the default spec) and
reuses it: ``<cache_root>/tiny-arith-<hash of the spec>/`` holds ``config.json``, ``model.safetensors``, the
tokenizer (byte-level, ChatML template, ``<think>``/``</think>`` as single tokens) and ``train_info.json``.

Training data mixes both modes of a SmolLM3-style model, half with the worked steps in the <think> block and half
with an empty block, with the loss on the assistant's part only. The no-thinking baseline is therefore a mode the
model was trained on, not an unfamiliar prompt. Its test accuracy in both modes is written to ``train_info.json``.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from trmlab.atomic import atomic_directory
from trmlab.config import TrainConfig
from trmlab.errors import TrmError
from trmlab.train.optim import lr_factor

TINY_NAME = "tiny-arith"
SPECIALS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
THINK_TOKENS = ["<think>", "</think>"]
ROLE_TOKENS = ["user", "assistant"]   # single tokens: the template costs 6 tokens a turn, not 17
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@dataclass
class TinyLLMSpec:
    """Architecture and training recipe of the offline LLM (its hash names the cache directory)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    steps: int = 3000           # 0 = an untrained (random) model: fast smoke tests
    batch_size: int = 32
    lr: float = 3e-3
    nothink_fraction: float = 0.5
    min_steps: int = 2          # operations per problem
    max_steps: int = 4
    seed: int = 0
    version: int = 2            # bump when the training data or format changes: a new cache directory

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def build_tokenizer():
    """Byte-level tokenizer (256 bytes, no merges) + ChatML specials + single-token think tags: built locally."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from trmlab.llm.sources import _bytes_to_unicode

    b2u = _bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({b2u[b]: len(SPECIALS) + b for b in range(256)})
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|pad|>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.add_tokens(THINK_TOKENS + ROLE_TOKENS)   # not "special": decoding keeps them (a completion shows its tags)
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_model(spec: TinyLLMSpec, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_heads,
        max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config)


def tiny_llm_dir(spec: TinyLLMSpec, cache_root: str | Path) -> Path:
    return Path(cache_root) / f"{TINY_NAME}-{spec.key()}"


def _batch(fmt, problems, rng: random.Random, nothink_fraction: float):
    """Token ids, attention mask and labels for one training batch. The loss covers what the model must produce:
    thinking, closing tag and answer after ``pre``; only the answer after ``nothink``, whose empty block is part of
    the prompt as in SmolLM3's no-thinking mode. So "<think>\n" is always followed by thinking, and the mode is
    chosen by the prompt, never by a coin flip at the first token."""
    tok = fmt.tokenizer
    rows = []
    for p in problems:
        nothink = rng.random() < nothink_fraction
        prompt = fmt.nothink(p) if nothink else fmt.pre(p)
        rest = fmt.answer(p) if nothink else fmt.full(p)[len(prompt):] + fmt.answer(p)
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = prompt_ids + tok(rest, add_special_tokens=False)["input_ids"]
        rows.append((ids, len(prompt_ids)))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(rows):   # right padding for training
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:])
        mask[i, :len(ids)] = 1
    return input_ids, mask, labels


def train_tiny_llm(spec: TinyLLMSpec, out_dir: str | Path, log=print) -> Path:
    """Train the offline LLM on the synthetic task and save it (weights, tokenizer, train_info.json) atomically."""
    from trmlab.llm.chat import ChatFormat
    from trmlab.llm.problems import synthetic_problems

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    model = build_model(spec, tokenizer)
    fmt = ChatFormat(tokenizer)
    rng = random.Random(spec.seed)
    stream = synthetic_problems(spec.steps * spec.batch_size, spec.seed, "llm", spec.min_steps, spec.max_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.0)
    # the recipe since version 1: a linear warmup over the first 5 % of steps times a cosine to 0 over ALL steps
    # (not only after the warmup, as train.schedule=cosine does): two factors of the one schedule function
    warmup = TrainConfig(steps=spec.steps, warmup_steps=max(1, spec.steps // 20), schedule="constant")
    cosine = TrainConfig(steps=spec.steps, warmup_steps=0, schedule="cosine", min_lr_ratio=0.0)
    t0, losses = time.perf_counter(), []
    model.train()
    for step in range(spec.steps):
        for g in opt.param_groups:
            g["lr"] = spec.lr * lr_factor(step, warmup) * lr_factor(step, cosine)
        ids, mask, labels = _batch(fmt, stream[step * spec.batch_size:(step + 1) * spec.batch_size], rng,
                                   spec.nothink_fraction)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == spec.steps:
            msg = f"tiny LLM step {step + 1}/{spec.steps}: loss {sum(losses[-100:]) / len(losses[-100:]):.4f}"
            if (step + 1) % 500 == 0:
                model.eval()
                acc = quick_accuracy(model, tokenizer, spec, n=50)
                model.train()
                msg += (f" | held-out accuracy (50) no thinking {acc['acc_nothink']:.2f}, "
                        f"thinking {acc['acc_think']:.2f}")
            log(f"{msg} ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    info = {"spec": asdict(spec), "train_time_s": time.perf_counter() - t0,
            "final_loss": losses[-1] if losses else None,
            "s_per_step": (time.perf_counter() - t0) / max(spec.steps, 1),
            "params": sum(p.numel() for p in model.parameters()), "torch_threads": torch.get_num_threads()}
    if spec.steps:  # an untrained model (smoke tests) is not worth measuring
        info.update(quick_accuracy(model, tokenizer, spec))
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "train_info.json").write_text(json.dumps(info, indent=2))
    if spec.steps:
        log(f"tiny LLM saved to {out_dir}: test accuracy no thinking {info['acc_nothink']:.3f}, "
            f"full thinking {info['acc_think']:.3f} on {info['acc_samples']} held-out problems")
    return out_dir


def quick_accuracy(model, tokenizer, spec: TinyLLMSpec, n: int = 200) -> dict:
    """Greedy test accuracy with and without thinking on ``n`` held-out problems."""
    from trmlab.llm.chat import ChatFormat
    from trmlab.llm.checker import check_answer
    from trmlab.llm.inject import generate
    from trmlab.llm.problems import synthetic_problems

    fmt = ChatFormat(tokenizer)
    problems = synthetic_problems(n, spec.seed, "test", spec.min_steps, spec.max_steps)
    out = {"acc_samples": n}
    for mode, texts, max_new in (("nothink", [fmt.nothink(p) for p in problems], 4),
                                 ("think", [fmt.pre(p) for p in problems], 8 * spec.max_steps + 8)):
        completions = generate(model, tokenizer, texts, max_new_tokens=max_new)
        out[f"acc_{mode}"] = sum(check_answer(c, p.answer) for c, p in zip(completions, problems)) / n
    return out


def ensure_tiny_llm(spec: TinyLLMSpec, cache_root: str | Path, log=print) -> Path:
    """The cached offline LLM for ``spec``, trained now if it is not there yet."""
    path = tiny_llm_dir(spec, cache_root)
    if (path / "train_info.json").exists():
        return path
    if spec.steps < 0:
        raise TrmError(f"tiny LLM steps must be >= 0, got {spec.steps}")
    path.parent.mkdir(parents=True, exist_ok=True)
    log(f"training the offline LLM {TINY_NAME} ({spec.num_layers} layers, d={spec.hidden_size}, {spec.steps} steps) "
        f"-> {path}")
    return train_tiny_llm(spec, path, log)
