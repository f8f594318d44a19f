"""The plain GPT baseline (seed 003): token embedding -> n_layer causal pre-norm blocks -> LM head, with a KV cache.

No recursion and no deep supervision: it is the model a recursive LM has to beat on the same data and budget.
It is built from the same blocks as the recursive LM (``nn/block.py``: RoPE, GQA, RMSNorm, the chosen MLP) and
unties embedding and head like it, so the two differ only in the recursion. ``step`` has the engine's signature,
so the one trainer trains it as a single supervision step (n_sup_train = 1).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from trmlab.nn.attention import KVCache
from trmlab.nn.block import ReasoningCore
from trmlab.recursion import Carry, StepOutput, lecun_init_


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        nn.init.normal_(self.wte.weight, std=1.0)   # nanochat: unit-scale token embeddings, pre-norm reads them
        # ReasoningCore applied once is exactly a GPT body: n_layer blocks and, with pre-norm, a final RMSNorm.
        self.core = ReasoningCore(cfg, cfg.seq_len)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        lecun_init_(self.core)
        lecun_init_(self.lm_head)

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        return self.core(self.wte(idx), 0, cache)

    def step(self, batch: dict, carry: Carry | None = None, reset: torch.Tensor | None = None) -> StepOutput:
        """The engine's interface: logits for every position; there is no carry to refine, nor a halting head."""
        h = self.hidden(batch["inputs"])
        q = torch.zeros(h.shape[0], device=h.device)
        return StepOutput(self.lm_head(h), q, Carry(h.detach(), h.detach()))

    forward = step

    def make_carry(self, y: torch.Tensor, z: torch.Tensor) -> Carry:
        return Carry(y, z)

    @torch.no_grad()
    def decode(self, idx: torch.Tensor, cache: KVCache | None = None, n_sup: int | None = None,
               halt: bool = False) -> tuple[torch.Tensor, int]:
        """Logits of the last position of ``idx`` [B, L], appending its keys/values to ``cache``; 1 step used."""
        return self.lm_head(self.hidden(idx, cache)[:, -1]), 1


def build_gpt(cfg) -> GPT:
    """Build from a ModelConfig whose vocab_size and seq_len are filled (seed 003: 8 x 512, d_ff 2048, ctx 512)."""
    return GPT(cfg)
