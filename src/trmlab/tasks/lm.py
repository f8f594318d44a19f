"""Language modelling on token shards: the recursive LM (seed 002) and the plain GPT baseline (seed 003).

The loss is next-token cross-entropy over every position. Evaluation scores each supervision step on the val
split and reports seed 000's refinement, (first-step loss - last-step loss) / first-step loss, always beside
the final loss, the corpus entropy bound and (through ``trm compare``) the baseline's loss: the improvement
reward can make the first step worse on purpose, so refinement alone says nothing about quality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from trmlab.atomic import copy_file
from trmlab.data.text import TextDataConfig, TokenStream, bits_per_byte, build_text
from trmlab.errors import TrmError
from trmlab.tasks.base import Task
from trmlab.tasks.puzzle import rank_slice
from trmlab.train.device import peak_memory_mb
from trmlab.train.losses import halt_loss, prediction_stats, token_losses

DEFAULT_SEQ_LEN = 256
NO_IGNORE = -1          # every position is a real next token: nothing is masked out of the loss
TOKENIZER_FILE = "tokenizer.json"   # in the data directory, and copied into every run trained on it
EMBEDDING_PREFIXES = ("embed.", "head.", "wte.", "lm_head.")   # recursive LM and GPT: embedding and LM head


def padded_vocab(n: int, multiple: int = 64) -> int:
    """The embedding table is rounded up to a multiple of 64 (matmul-friendly); ids >= n are never targets."""
    return -(-n // multiple) * multiple


@dataclass
class LMData:
    path: Path
    stream: TokenStream
    meta: dict
    seq_len: int                                # the context: training windows are seq_len tokens
    splits: tuple = ("train", "val", "test")   # "test" is the held-out val split (``trm eval``'s default)


def non_embedding_params(model) -> int:
    """Parameters outside the token embedding and LM head: the size scaling laws compare (Kaplan et al.)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(EMBEDDING_PREFIXES))


def built_vocab(cfg, data_root: str | Path) -> tuple[int, Path] | None:
    """(tokenizer size, its file) when ``cfg``'s data is already built under ``data_root``, else None."""
    from trmlab.data.text import load_text_meta, text_dir_name
    path = Path(data_root) / text_dir_name(cfg.data)
    try:
        return load_text_meta(path)["vocab_size"], path / TOKENIZER_FILE
    except TrmError:   # not built (or half-built): only the configured size is known
        return None


def save_run_tokenizer(data_dir: Path, run_dir: Path) -> None:
    """Copy the data's tokenizer into the run, so `trm generate` needs no data directory (a checkpoint or
    <run>/best finds it in its run). Written under a temporary name and renamed: a reader never sees half a file."""
    src, dst = Path(data_dir) / TOKENIZER_FILE, Path(run_dir) / TOKENIZER_FILE
    if dst.exists() or not src.is_file():
        return
    copy_file(src, dst)


def run_tokenizer(checkpoint: str | Path) -> Path | None:
    """The tokenizer saved with a run, for any path ``trm generate`` accepts: <run>, <run>/best, or a
    checkpoint <run>[/best]/checkpoints/step_N (whose run directory holds it). None if there is none."""
    path = Path(checkpoint)
    dirs = [path]
    if path.parent.name == "checkpoints":
        dirs.append(path.parent.parent)
    if dirs[-1].name == "best":   # best/ lives inside its run, which trained with the same tokenizer
        dirs.append(dirs[-1].parent)
    return next((d / TOKENIZER_FILE for d in dirs if (d / TOKENIZER_FILE).is_file()), None)


def refinement_line(m: dict, baseline_val_loss: float | None = None, baseline_name: str = "baseline") -> str:
    """One line that never shows refinement without the final loss, the entropy bound and the baseline."""
    per_step = m["val_loss_per_step"]
    if len(per_step) > 1:
        head = (f"val loss by supervision step {' -> '.join(f'{v:.3f}' for v in per_step)}"
                f" | refinement {m['refinement_pct']:.1f}% (first to last step)")
    else:
        head = f"val loss {m['val_loss']:.3f} (one step: no refinement)"
    bound = m.get("entropy_bound")
    tail = [f"final {m['val_loss']:.3f} nats/token, {m['bits_per_byte']:.3f} bits/byte"]
    tail.append(f"entropy bound {bound:.3f} nats/token, gap {m['val_loss'] - bound:.3f}" if bound is not None
                else "no known entropy bound (real text)")
    tail.append(f"{baseline_name} {baseline_val_loss:.3f}, difference {m['val_loss'] - baseline_val_loss:+.3f}"
                if baseline_val_loss is not None else "no baseline given (trm compare <run> <gpt run>)")
    return " | ".join([head] + tail)


class LMTask(Task):
    name = "lm"
    data_config = TextDataConfig
    metric = "val_loss"
    lower_is_better = True

    def build_data(self, data_cfg, data_root: str | Path = "data") -> Path:
        return build_text(data_cfg, out_root=data_root)

    def load(self, cfg, path) -> LMData:
        """Open the shards and fill model.vocab_size (padded) and model.seq_len (the context) from them."""
        stream = TokenStream(path, seed=cfg.train.seed)
        m = cfg.model
        if m.vocab_size == 0:
            m.vocab_size = padded_vocab(stream.vocab_size)
        elif m.vocab_size < stream.vocab_size:
            raise TrmError(f"model.vocab_size={m.vocab_size} is smaller than the tokenizer of {path} "
                           f"({stream.vocab_size} tokens): tokenizer and model do not match")
        if m.seq_len == 0:
            m.seq_len = DEFAULT_SEQ_LEN
        return LMData(Path(path), stream, stream.meta, m.seq_len)

    def shapes(self, cfg) -> dict:
        """Shapes without building data (``trm info``): the tokenizer's configured size, padded."""
        return {"vocab_size": padded_vocab(cfg.data.vocab_size), "seq_len": cfg.model.seq_len or DEFAULT_SEQ_LEN}

    def build_model(self, cfg):
        m = cfg.model
        if not m.causal:
            raise TrmError("task lm needs model.causal=true (a language model must not see the next token)")
        if m.core != "attention":
            raise TrmError("task lm needs model.core=attention (the MLP mixer needs a fixed length, text has none)")
        if m.arch == "gpt" and (m.n_loops, m.T_recursion, m.n_sup_train, m.n_sup_inference) != (1, 1, 1, 1):
            raise TrmError("model.arch=gpt has no recursion: set n_loops, T_recursion, n_sup_train and "
                           "n_sup_inference to 1")
        from trmlab.models.lm import build_lm
        return build_lm(m)

    def sampler(self, data: LMData, seed: int):
        return None   # the stream samples windows from (seed, step) itself

    def batch(self, data: LMData, sampler, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> dict:
        rows = rank_slice(batch_size, rank, world_size)
        x, y = data.stream.batch(step, rows.stop - rows.start, data.seq_len, "train", rank, world_size)
        return {"inputs": x, "labels": y}

    def losses(self, out, batch: dict, cfg):
        """Per-sample mean token CE [B]; 'correct' = every next token right (rare for text, ACT's target).

        With ACT the halting head is trained on the fraction of next tokens the current step gets right (a soft
        target), so q > 0 reads 'more than half right'; whole-sequence correctness would almost never fire.
        """
        tok = token_losses(out.logits, batch["labels"], cfg.train.loss, ignore_index=NO_IGNORE)
        n_hit, n_valid, correct = prediction_stats(out.logits, batch["labels"], ignore_index=NO_IGNORE)
        acc = n_hit.float() / n_valid.clamp(min=1)
        loss = tok
        if cfg.model.halting == "act" and cfg.model.arch != "gpt":
            loss = loss + cfg.train.halt_loss_weight * halt_loss(out.q_logit, acc)
        return loss, correct, {"token_loss": tok.detach(), "token_acc": acc}

    def save_run_files(self, data: LMData, run_dir: Path):
        """Called by the trainer when a run starts: the run keeps its own tokenizer."""
        save_run_tokenizer(data.path, run_dir)

    @torch.no_grad()
    def evaluate(self, model, data: LMData, cfg, device, split: str = "val", max_samples: int = 0, out_dir=None,
                 **options) -> dict:
        """Val loss after every supervision step (all n_sup_inference steps run), ppl, bits/byte, refinement."""
        split = "val" if split == "test" else split
        seq_len, n_sup = cfg.model.seq_len, cfg.model.n_sup_inference
        bs = min(max(cfg.train.batch_size, 8), 64)
        n_batches = math.ceil(max_samples / bs) if max_samples else None
        if split == "val":
            batches = data.stream.val_batches(bs, seq_len, n_batches)
        elif split == "train":   # a fixed sample of training windows (from steps no run reaches)
            batches = (data.stream.batch(10**9 + i, bs, seq_len, "train") for i in range(n_batches or 16))
        else:
            raise TrmError(f"split must be train, val or test, got {split!r}")
        was_training = model.training
        model.eval()
        loss_sum, n_tok = torch.zeros(n_sup, dtype=torch.float64), 0
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            carry = None
            for k in range(n_sup):
                out = model.step({"inputs": x}, carry)
                carry = out.carry
                loss_sum[k] += float(F.cross_entropy(out.logits.float().flatten(0, 1), y.flatten(), reduction="sum"))
            n_tok += y.numel()
        model.train(was_training)
        if n_tok == 0:
            raise TrmError(f"no {split} windows of {seq_len} tokens to evaluate")
        per_step = (loss_sum / n_tok).tolist()
        return self._metrics(per_step, data, n_tok, device)

    def _metrics(self, per_step: list[float], data: LMData, n_tok: int, device) -> dict:
        first, last = per_step[0], per_step[-1]
        m = {"val_loss": last, "ppl": math.exp(min(last, 50.0)),
             "bits_per_byte": bits_per_byte(last, data.stream.tokens_per_byte("val")),
             "first_step_loss": first, "refinement_pct": 100.0 * (first - last) / first if first else 0.0,
             "best_step": 1 + min(range(len(per_step)), key=per_step.__getitem__)}
        if "entropy_nats_per_token_val" in data.meta:
            m["entropy_bound"] = data.meta["entropy_nats_per_token_val"]
            m["entropy_bound_bits_per_byte"] = data.meta["entropy_bits_per_byte"]["val"]
            m["gap_to_bound"] = last - m["entropy_bound"]
        m.update({"val_loss_per_step": [round(v, 5) for v in per_step], "n_sup_inference": len(per_step),
                  "eval_tokens": n_tok, "peak_mem_mb": peak_memory_mb(torch.device(device))})
        m["refinement"] = refinement_line(m)
        return m
