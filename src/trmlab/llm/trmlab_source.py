"""A trmlab language-model run as a phase-1 hidden-state source: ``--model runs/<lm run>``.

Any directory written by ``trm train <lm preset>`` (``lm-tiny``, ``gpt-tiny``, ``lm-A``.. or a run's ``best/``, or
one ``checkpoints/step_N`` directory) can stand in for a Hugging Face model, so phase 1 runs offline with a model
that was really trained. Weights: the EMA copy when the run kept one (what ``trm eval`` and ``trm generate`` use),
else the raw weights. Tokenizer: the one the run was trained with, found as ``trm generate`` finds it (the run's
built data directory ``<data_root>/text-<hash>/tokenizer.json``; ``--data_root`` / ``--tokenizer`` override).

Texts are encoded as in training: ``<|endoftext|>`` then the text's tokens, truncated to
``min(--max_seq_length, model.seq_len)`` (the model has no positions beyond its context), right-padded.

``--layer`` indexes a tuple laid out like transformers' ``output_hidden_states`` (0 = token embeddings,
-1 = the state the LM head reads, which is the default):

* plain GPT (``model.arch=gpt``): ``n_layer + 1`` entries, (embeddings, block 1, ..., block n_layer); the last
  one has the core's final RMSNorm applied, exactly as Llama's last hidden state has its final norm;
* recursive LM: ``n_sup_inference + 1`` entries, (embeddings, y after supervision step 1, ..., y after step
  n_sup_inference). The answer state y after a step is what the head reads to predict the next token at that
  step (every step is a full prediction under deep supervision), so -1 is the state behind the model's output.
  All ``n_sup_inference`` steps run, from the fixed initial (y, z), as ``trm eval`` runs them; ACT halting is
  not applied (it would give samples different depths). The latent z is not exposed: the head never reads it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from trmlab.errors import TrmError

RUN_MARKERS = ("config.yaml", "summary.json", "checkpoints", "state.json", "model.safetensors")


def is_trmlab_run(name: str) -> bool:
    """A directory that looks like a trmlab run or checkpoint (and not like a transformers model directory)."""
    p = Path(str(name)).expanduser()
    return p.is_dir() and not (p / "config.json").exists() and any((p / m).exists() for m in RUN_MARKERS)


def _checkpoint_dir(name: str) -> Path:
    from trmlab.train.checkpoint import resolve_checkpoint

    p = Path(name).expanduser()
    try:
        return resolve_checkpoint(p)
    except TrmError:
        raise TrmError(f"{name}: a trmlab run without a checkpoint (no checkpoints/step_*/model.safetensors; "
                       f"did training save one?)") from None


def _run_config(ckpt: Path, name: str):
    from trmlab.config import from_dict

    try:
        state = json.loads((ckpt / "state.json").read_text())
        cfg = from_dict(state["config"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise TrmError(f"{name}: {ckpt / 'state.json'} is missing or has no run config") from None
    if cfg.task != "lm":
        raise TrmError(f"{name} is a trmlab '{cfg.task}' run; --model needs a language model (task lm: "
                       f"trm train lm-tiny / gpt-tiny / lm-A ...)")
    if not cfg.model.vocab_size or not cfg.model.seq_len:
        raise TrmError(f"{name}: its saved config has no vocab_size / seq_len")
    return cfg, state


def _weights_file(ckpt: Path) -> Path:
    return ckpt / "ema.safetensors" if (ckpt / "ema.safetensors").exists() else ckpt / "model.safetensors"


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _tokenizer_candidates(name: str, ckpt: Path, cfg, data_root: str | None) -> list[Path]:
    from trmlab.data.text import text_dir_name

    run = Path(name).expanduser()
    found = [ckpt / "tokenizer.json", run / "tokenizer.json"]
    if cfg.data.tokenizer:
        found.append(Path(cfg.data.tokenizer).expanduser())
    try:
        sub = text_dir_name(cfg.data)
    except OSError:  # the run's local corpus or tokenizer file is gone: its hash cannot be recomputed
        sub = None
    if sub:
        # --data_root (default ./data), then the data/ next to runs/ when the run sits in <project>/runs/<name>
        roots = [Path(data_root or "data").expanduser(), run.resolve().parent.parent / "data"]
        for root in roots:
            found.append(root / sub / "tokenizer.json")
    out = []
    for p in found:
        if p not in out:
            out.append(p)
    return out


def find_run_tokenizer(name: str, ckpt: Path, cfg, data_root: str | None = None, tokenizer: str | None = None):
    """The tokenizer the run was trained with (see the module docstring); TrmError naming where it looked."""
    from trmlab.data.tokenizer import load_tokenizer

    if tokenizer:
        path = Path(tokenizer).expanduser()
        if not path.is_file():
            raise TrmError(f"--tokenizer {tokenizer} does not exist")
    else:
        cands = _tokenizer_candidates(name, ckpt, cfg, data_root)
        path = next((p for p in cands if p.is_file()), None)
        if path is None:
            looked = ", ".join(str(p) for p in cands[-2:])
            raise TrmError(f"{name}: cannot find the tokenizer it was trained with (looked in {looked}); pass "
                           f"--data_root DIR (the --data-root of its `trm train`) or --tokenizer PATH/tokenizer.json")
    tok = load_tokenizer(path)
    if tok.vocab_size > cfg.model.vocab_size:
        raise TrmError(f"{path} has {tok.vocab_size} tokens but {name}'s embedding has {cfg.model.vocab_size}: "
                       f"not the tokenizer this model was trained with")
    return tok, path


def num_layers(cfg) -> int:
    """Entries of the hidden-state tuple minus one (the embeddings): n_layer (GPT) or n_sup_inference."""
    return int(cfg.model.n_layer) if cfg.model.arch == "gpt" else int(cfg.model.n_sup_inference)


class TrmlabLMSource:
    """A trained trmlab LM (recursive or GPT) behind the ``HiddenStateSource`` protocol."""

    def __init__(self, model, cfg, tokenizer, name: str = "model", max_seq_length: int = 512, device="cpu"):
        self.name, self.cfg, self.tokenizer = name, cfg, tokenizer
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.arch = cfg.model.arch
        self.hidden_size = int(cfg.model.n_embd)
        self.num_layers = num_layers(cfg)
        self.context = int(cfg.model.seq_len)
        self.max_seq_length = min(int(max_seq_length), self.context)

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        eot = self.tokenizer.eot_id
        rows = [([eot] + ids)[: self.max_seq_length] for ids in self.tokenizer.encode_batch(list(texts))]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), eot, dtype=torch.long)   # padding: any valid id, masked out
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return ids, mask

    def check_layer(self, layer: int) -> int:
        n = self.num_layers
        if not -(n + 1) <= int(layer) <= n:
            what = "blocks" if self.arch == "gpt" else "supervision steps"
            raise TrmError(f"--layer {layer} out of range for {self.name} ({n} {what}: use -{n + 1}..{n}, "
                           f"-1 = the state the LM head reads)")
        return int(layer)

    @torch.no_grad()
    def all_hidden_states(self, ids: torch.Tensor, upto: int | None = None) -> tuple[torch.Tensor, ...]:
        """The whole tuple (see the module docstring); ``upto`` stops after that index (skips the rest)."""
        ids = ids.to(self.device)
        n = self.num_layers
        upto = n if upto is None else upto
        if self.arch == "gpt":
            from trmlab.nn.block import rms_norm

            core = self.model.core
            h = self.model.wte(ids)
            out = [h]
            for i, block in enumerate(core.blocks[:upto]):
                h = block(h, None, i)
                last = i == n - 1
                out.append(rms_norm(h) if last and core.pre_norm else h)  # = GPT.hidden(), what lm_head reads
            return tuple(out)
        from trmlab.recursion import deep_recursion

        m = self.model
        x = m.embed({"inputs": ids})
        carry = m.initial_carry(x)
        y, z = carry.y, carry.z
        out = [x]
        for _ in range(upto):
            y, z = deep_recursion(m.core, x, y, z, m.n_loops, m.T_recursion)
            out.append(y)
        return tuple(out)

    def hidden_states(self, ids: torch.Tensor, mask: torch.Tensor, layer: int = -1) -> torch.Tensor:
        layer = self.check_layer(layer)
        index = layer if layer >= 0 else self.num_layers + 1 + layer
        # right padding cannot change real positions: the LM is causal (task lm refuses anything else)
        return self.all_hidden_states(ids, upto=index)[index]

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's LM head on a final hidden state (tests check -1 is what it reads)."""
        return (self.model.lm_head if self.arch == "gpt" else self.model.head)(hidden.to(self.device))


class TrmlabRunLoader:
    """Registered with ``trmlab.data.hidden_states``: claims names that are trmlab run/checkpoint directories."""

    name = "trmlab run"

    def accepts(self, name: str) -> bool:
        return is_trmlab_run(name)

    def probe(self, name: str, data_root: str | None = None, tokenizer: str | None = None, **_) -> dict:
        """Everything checkable without building the model: hidden size, depth, tokenizer, fingerprint."""
        ckpt = _checkpoint_dir(name)
        cfg, state = _run_config(ckpt, name)
        _, tok_path = find_run_tokenizer(name, ckpt, cfg, data_root, tokenizer)
        weights = _weights_file(ckpt)
        return {"hidden_size": int(cfg.model.n_embd), "num_layers": num_layers(cfg), "context": int(cfg.model.seq_len),
                "fingerprint": {"kind": "trmlab", "arch": cfg.model.arch, "checkpoint": str(ckpt.resolve()),
                                "step": state.get("step"), "weights": weights.name, "sha1": _sha1(weights),
                                "tokenizer_sha1": _sha1(tok_path)}}

    def load(self, name: str, max_seq_length: int = 512, device="cpu", data_root: str | None = None,
             tokenizer: str | None = None, **_) -> TrmlabLMSource:
        from trmlab.api import load

        ckpt = _checkpoint_dir(name)
        cfg, _ = _run_config(ckpt, name)
        tok, _ = find_run_tokenizer(name, ckpt, cfg, data_root, tokenizer)
        model, cfg = load(ckpt, use_ema=True, device=str(device))
        return TrmlabLMSource(model, cfg, tok, name=name, max_seq_length=max_seq_length, device=device)


__all__ = ["TrmlabLMSource", "TrmlabRunLoader", "is_trmlab_run", "find_run_tokenizer", "num_layers"]
