"""The recursive language model (seed 002) on the engine: token embedding -> causal shared core -> LM head.

Each position's answer state y and latent z are refined by the shared core exactly as for puzzles (recursion.py);
the core is causal, so the logits at position t depend on tokens <= t only, and every supervision step is a full
next-token prediction that deep supervision can score. ``GPTConfig`` carries seed 002's field names so a
seed-002 config pastes in; ``build_lm`` returns this model, or the plain GPT baseline when ``model.arch=gpt``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn as nn

from trmlab.nn.attention import KVCache
from trmlab.nn.block import ReasoningCore
from trmlab.recursion import Carry, RecursiveModel, deep_recursion, lecun_init_


class TokenEmbedding(nn.Module):
    """x = wte(tokens); unit scale (nanochat) so the input is not drowned by the unit-RMS initial y and z."""

    def __init__(self, vocab_size: int, n_embd: int):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        nn.init.normal_(self.wte.weight, std=1.0)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.wte(batch["inputs"])


class _CachedCore:
    """The shared core with a KV cache: call c of a decoding pass uses the cache slots of application c % slots.

    ``slots`` = every call of the pass (the exact cache): position t's state after the c-th core call depends
    only on tokens <= t and on what earlier positions had after their own c-th call, so caching keys/values
    per (call, layer) reproduces full recomputation exactly. ``slots`` = n_loops + 1 (the shared cache): one
    recursion is the recurrent unit, as Huginn's block; its i-th call reuses the slots of every earlier
    recursion's i-th call, which keep the latest application's keys/values (``KVCache(shared=True)``).
    """

    def __init__(self, core: ReasoningCore, cache: KVCache, slots: int):
        self.core, self.cache, self.slots, self.calls = core, cache, slots, 0
        self.n_layer = len(core.blocks)

    def __call__(self, h: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        out = self.core(h, injection, self.cache, (self.calls % self.slots) * self.n_layer)
        self.calls += 1
        return out


class RecursiveLM(RecursiveModel):
    """The engine with a causal core, plus incremental decoding for ``trm generate``."""

    def cache_slots(self, cache: KVCache, n_sup: int) -> int:
        """Core applications that own cache slots in one decoding pass: all of them, or one recursion's (shared)."""
        per_recursion = self.n_loops + 1
        return per_recursion if cache.shared else n_sup * self.T_recursion * per_recursion

    @torch.inference_mode()
    def decode(self, idx: torch.Tensor, cache: KVCache | None = None, n_sup: int | None = None,
               halt: bool = False) -> tuple[torch.Tensor, int]:
        """Logits of the last position of ``idx`` [B, L] after up to ``n_sup`` supervision steps, and steps used.

        With a cache, ``idx`` holds only the new tokens. An exact cache (``KVCache()``) gives every step and
        recursion its own slots, so the result equals recomputing the whole context; a shared one
        (``KVCache(shared=True)``) keeps one recursion's worth, the latest, n_sup x T_recursion times smaller and
        exact only when n_sup = T_recursion = 1. ACT halting (``halt``) stops at the first step whose halting
        logit (pooled over the whole sequence, as in training) is > 0; positions then differ in how many steps
        they saw, which a cache cannot hold, so halting needs ``cache=None`` (the context is recomputed).
        """
        if halt and cache is not None:
            raise ValueError("ACT halting recomputes the context: call decode with cache=None")
        n_sup = n_sup or self.cfg.n_sup_inference
        x = self.embed({"inputs": idx})
        carry = self.initial_carry(x)
        core = _CachedCore(self.core, cache, self.cache_slots(cache, n_sup)) if cache is not None else self.core
        steps = n_sup
        for k in range(n_sup):
            y, z = deep_recursion(core, x, carry.y, carry.z, self.n_loops, self.T_recursion)
            carry = Carry(y, z)
            if halt and bool((self.q_head(y.mean(dim=1)) > 0).all()):
                steps = k + 1
                break
        if cache is not None:
            cache.commit()
        return self.head(carry.y[:, -1]), steps


def build_lm(cfg) -> nn.Module:
    """The LM for a ModelConfig with vocab_size and seq_len filled: recursive (default) or the plain GPT."""
    if cfg.arch == "gpt":
        from trmlab.models.gpt import build_gpt
        return build_gpt(cfg)
    embed = TokenEmbedding(cfg.vocab_size, cfg.n_embd)
    core = ReasoningCore(cfg, cfg.seq_len)
    head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
    lecun_init_(core)
    lecun_init_(head)
    return RecursiveLM(cfg, embed, core, head)


# ------------------------------------------------------------------------------------------------------------
# Seed 002's config, as its users write it, and its mapping onto ours.

@dataclass
class GPTConfig:
    """Seed 002's ``GPTConfig`` field for field (defaults: its configuration A). ``to_config`` maps it onto a
    trmlab Config (model / train / data sections); ``from_config`` reads it back."""

    sequence_len: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int = 4
    n_embd: int = 768
    n_loops: int = 3
    T_recursion: int = 2
    n_sup_train: int = 8
    n_sup_inference: int = 8
    activation_fn: str = "swiglu"
    supervision_weight_base: float = 5.0
    improvement_reward_scale: float = 1.0

    # seed-002 name -> (section, our name); every other field has the same name in ModelConfig. vocab_size is the
    # tokenizer size asked for (data.vocab_size): model.vocab_size stays 0 so the table follows the tokenizer the
    # data really builds (the offline corpus stops far short of 50304), exactly as `trm train` sizes it.
    RENAMED = {"sequence_len": ("model", "seq_len"), "vocab_size": ("data", "vocab_size"),
               "supervision_weight_base": ("train", "supervision_weight_base"),
               "improvement_reward_scale": ("train", "improvement_reward_scale")}

    def to_config(self, preset: str = "lm-A", overrides: list[str] | tuple = ()):
        """``preset``, this config's values on top, then ``overrides`` on top of both: a key=value the caller wrote
        out explicitly wins over a GPTConfig field (``model.vocab_size=N`` pins the embedding table)."""
        from trmlab.config import from_dict, parse_overrides, preset_dict
        d = preset_dict(preset)  # a fresh dict, read from the YAML
        for f in fields(self):
            section, name = self.RENAMED.get(f.name, ("model", f.name))
            d.setdefault(section, {})[name] = getattr(self, f.name)
        return from_dict(parse_overrides(list(overrides), d))

    @classmethod
    def from_config(cls, cfg) -> "GPTConfig":
        m, t = cfg.model, cfg.train
        values = {f.name: getattr(m, f.name) for f in fields(cls) if f.name not in cls.RENAMED}
        values.update(sequence_len=m.seq_len, vocab_size=m.vocab_size or cfg.data.vocab_size,
                      n_kv_head=m.n_kv_head or m.n_head, supervision_weight_base=t.supervision_weight_base,
                      improvement_reward_scale=t.improvement_reward_scale)
        return cls(**values)
