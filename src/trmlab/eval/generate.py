"""Sampling from a trained LM (recursive or plain GPT) with a KV cache: the library half of `trm generate`.

`trm generate <run|checkpoint> --prompt ...`: sample text from a trained LM, recursive or plain GPT.

    trm generate runs/lm-tiny --prompt "A story about the sea." --max-new-tokens 100 --temperature 0.8 --top-k 50

Both models decode with a KV cache by default. The plain GPT caches one key/value pair per layer. The recursive
LM runs, for every new token, n_sup_inference supervision steps of T_recursion x (n_loops + 1) core calls, all
from the engine's initial (y, z), exactly as in training and evaluation; each of those core calls gets its own
cache slots, which reproduces full recomputation of the context exactly (tested) at n_sup x T x (n_loops + 1)
times the GPT's cache memory. With ACT halting (model.halting=act) the model may stop before n_sup_inference
steps when its halting logit says so; positions would then differ in steps, which no cache can hold, so
the context is recomputed for every token. The line after the text says how many steps each token used.
Every document in training starts with <|endoftext|>, so the prompt is prefixed with it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trmlab.errors import TrmError
from trmlab.nn.attention import KVCache


def check_sampling(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, n_sup: int | None = None,
                   max_new_tokens: int = 0) -> None:
    """One-line errors for settings that would crash the sampler (top_p 0) or be quietly meaningless."""
    # written as "not (ok)" so that NaN, which fails every comparison, is refused too
    if not (0 <= temperature < math.inf):
        raise TrmError(f"--temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if not (0 < top_p <= 1):
        raise TrmError(f"--top-p must be in (0, 1] (1 = off), got {top_p}")
    if top_k < 0:
        raise TrmError(f"--top-k must be >= 0 (0 = off), got {top_k}")
    if n_sup is not None and n_sup < 1:
        raise TrmError(f"--n-sup must be >= 1 (leave it out for model.n_sup_inference), got {n_sup}")
    if max_new_tokens < 0:
        raise TrmError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> int:
    """One token id from logits [V]: greedy at temperature 0, else softmax(logits / T) cut to top-k and top-p."""
    logits = logits.float().cpu()
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits / temperature
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:   # nucleus: the smallest set of tokens whose probability reaches top_p
        sorted_p, order = probs.sort(descending=True)
        drop = sorted_p.cumsum(0) - sorted_p >= top_p
        probs[order[drop]] = 0.0
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


def cache_mb(cache: KVCache | None) -> float:
    if cache is None:
        return 0.0
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size()
               for k, v in cache.layers.values()) / 2**20


@dataclass
class Generation:
    tokens: list[int]                                   # the new tokens (without the prompt)
    prompt_tokens: int
    prefill_s: float                                    # time to read the prompt
    decode_s: float                                     # time to produce every token after the first
    steps: list[int] = field(default_factory=list)      # supervision steps used for each new token
    cache_mb: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / max(self.prefill_s + self.decode_s, 1e-9)


@torch.no_grad()
def generate_ids(model, prompt: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, use_cache: bool = True, n_sup: int | None = None,
                 halt: bool = False, stop_id: int | None = None, device: torch.device | str = "cpu") -> Generation:
    """Autoregressive sampling from ``model.decode`` (GPT or RecursiveLM); ``halt`` implies no cache."""
    check_sampling(temperature, top_k, top_p, n_sup, max_new_tokens)
    if not prompt:
        raise TrmError("generation needs at least one prompt token")
    use_cache = use_cache and not halt
    gen = torch.Generator().manual_seed(seed)
    cache = KVCache() if use_cache else None
    ids = list(prompt)
    t0 = time.perf_counter()
    logits, used = model.decode(torch.tensor([ids], device=device), cache, n_sup, halt)
    prefill = time.perf_counter() - t0
    out, steps = [], []
    for i in range(max_new_tokens):
        tok = sample_next(logits[0], temperature, top_k, top_p, gen)
        out.append(tok)
        steps.append(used)
        ids.append(tok)
        if tok == stop_id or i == max_new_tokens - 1:
            break
        context = [tok] if use_cache else ids
        logits, used = model.decode(torch.tensor([context], device=device), cache, n_sup, halt)
    decode = time.perf_counter() - t0 - prefill
    return Generation(out, len(prompt), prefill, decode, steps, cache_mb(cache))


def find_tokenizer(cfg, tokenizer: str = "", data_root: str = "data", checkpoint: str | Path = ""):
    """The tokenizer the run was trained with: --tokenizer, else the run's own copy, else its data directory's."""
    from trmlab.data.text import text_dir_name
    from trmlab.data.tokenizer import load_tokenizer
    from trmlab.tasks.lm import TOKENIZER_FILE, run_tokenizer
    if tokenizer and not Path(tokenizer).is_file():
        raise TrmError(f"--tokenizer {tokenizer}: no such file")
    path = Path(tokenizer) if tokenizer else run_tokenizer(checkpoint) if checkpoint else None
    path = path or Path(data_root) / text_dir_name(cfg.data) / TOKENIZER_FILE
    if not path.is_file():
        raise TrmError(f"tokenizer not found in the run or at {path}: pass --data-root (where the run's data was "
                       f"built) or --tokenizer PATH/tokenizer.json")
    tok = load_tokenizer(path)
    if tok.vocab_size > cfg.model.vocab_size:
        raise TrmError(f"{path} has {tok.vocab_size} tokens but the model's embedding has {cfg.model.vocab_size}: "
                       "not the tokenizer this model was trained with")
    return tok
