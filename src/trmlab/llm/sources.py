"""LLMs as hidden-state sources for phase 1 (the extractor in ``data/hidden_states.py`` reads any of them).

``load_hidden_state_source(name)`` resolves a name: ``tiny-random`` (a tiny randomly initialised Llama built from a
config with a local byte-level tokenizer: smoke runs, no download), a trmlab LM run directory written by
``trm train`` (``llm/trmlab_source.py``: the project's own trained models, offline), a GGUF file or
``smollm2-135m`` (``llm/pretrained.py``), a local transformers directory, a Hugging Face hub name (needs
network), or anything a ``SourceLoader`` registered with ``register_source_loader`` accepts.
``HFHiddenStateSource`` implements the ``HiddenStateSource`` protocol for any ``transformers`` causal LM
(``output_hidden_states``; ``layer`` indexes that tuple, so 0 = embeddings and -1 = the last layer, after the
final norm).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from trmlab.data.hidden_states import TINY_RANDOM, HiddenStateSource, hub_reachable
from trmlab.errors import TrmError, first_line


class HFHiddenStateSource:
    """A ``transformers`` causal LM as a hidden-state source."""

    def __init__(self, model, tokenizer, name: str = "model", max_seq_length: int = 512, device=None):
        self.name = name
        self.max_seq_length = int(max_seq_length)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        if getattr(tokenizer, "pad_token_id", None) is None:
            if getattr(tokenizer, "eos_token", None) is None:
                raise TrmError(f"tokenizer of {name} has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        cfg = model.config
        self.hidden_size = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) or getattr(cfg, "d_model"))
        self.num_layers = int(getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 0) or 0)

    @classmethod
    def from_pretrained(cls, name: str, max_seq_length: int = 512, device=None, torch_dtype=None,
                        trust_remote_code: bool = False) -> "HFHiddenStateSource":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from trmlab.llm.pretrained import is_gguf, resolve_model_path

        # a GGUF file (or smollm2-135m) is read once, then loaded from its cached HF directory
        path = resolve_model_path(name) if is_gguf(name) else name
        local = Path(path).expanduser().exists()
        check_hf_path(path)
        if not local and not hub_reachable():
            raise TrmError(f"cannot load model {name}: not a local path and no network")
        kw = {"trust_remote_code": trust_remote_code}
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **kw)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype or torch.float32, **kw)
        except TrmError:
            raise
        except Exception as e:  # missing repo, gated, corrupt files: one line for the user
            where = "local path" if local else "hub model"
            msg = first_line(e)
            raise TrmError(f"cannot load model {name} ({where}): {msg}") from None
        return cls(model, tokenizer, name=name, max_seq_length=max_seq_length, device=device)

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_seq_length, padding="longest",
                             return_tensors="pt")
        return enc["input_ids"].long(), enc["attention_mask"].long()

    def check_layer(self, layer: int) -> int:
        n = self.num_layers
        if n and not -(n + 1) <= int(layer) <= n:
            raise TrmError(f"--layer {layer} out of range for {self.name} ({n} layers: use -{n + 1}..{n})")
        return int(layer)

    @torch.no_grad()
    def hidden_states(self, ids: torch.Tensor, mask: torch.Tensor, layer: int = -1) -> torch.Tensor:
        self.check_layer(layer)
        ids, mask = ids.to(self.device), mask.to(self.device)
        # the base model gives the same hidden_states tuple without the [B, L, vocab] logits
        base = getattr(self.model, "base_model", None) or self.model
        out = base(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        return out.hidden_states[layer]


# ----------------------------------------------------------------------------------- tiny random model (offline)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map (what byte-level BPE vocabularies are written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens + <pad> <s> </s>, no merges) built locally: no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    b2u = _bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    for tok in ("<pad>", "<s>", "</s>"):
        vocab[tok] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                      special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def build_tiny_random_model(hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                            max_position_embeddings: int = 2048, seed: int = 0):
    """(model, tokenizer): a randomly initialised Llama from a config plus the byte tokenizer. Deterministic in
    ``seed``, so every process and every rerun gets the same "model"."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=max_position_embeddings, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    cpu_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(cpu_state)
    return model.eval(), tokenizer


def save_tiny_random_model(path: str | Path, **kw) -> Path:
    """Writes a tiny random Llama + byte tokenizer with ``save_pretrained`` (loadable by ``from_pretrained``)."""
    model, tokenizer = build_tiny_random_model(**kw)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class SourceLoader(Protocol):
    """Claims some ``--model`` names and turns them into sources (e.g. ``trmlab.llm.trmlab_source``).

    ``probe`` must be cheap (no weights loaded): it lets ``trm compress`` check sizes and layers before anything is
    written and names the exact weights in the hidden-state cache key (``fingerprint``), so a retrained model never
    reuses stale states. ``options`` are source-specific CLI options (``data_root``, ``tokenizer``)."""

    def accepts(self, name: str) -> bool: ...

    def probe(self, name: str, **options) -> dict: ...   # hidden_size, num_layers, fingerprint

    def load(self, name: str, max_seq_length: int = 512, device="cpu", **options) -> HiddenStateSource: ...


_SOURCE_LOADERS: list[SourceLoader] = []
_BUILTINS_REGISTERED = False


def register_source_loader(loader: SourceLoader) -> None:
    """Adds a loader, tried (latest first) before transformers for every ``--model`` name."""
    _SOURCE_LOADERS.insert(0, loader)


def _loaders() -> list[SourceLoader]:
    global _BUILTINS_REGISTERED
    if not _BUILTINS_REGISTERED:  # lazily: trmlab_source imports the LM stack, which plain HF use never needs
        from trmlab.llm.trmlab_source import TrmlabRunLoader

        _SOURCE_LOADERS.append(TrmlabRunLoader())
        _BUILTINS_REGISTERED = True
    return _SOURCE_LOADERS


def find_source_loader(name: str) -> SourceLoader | None:
    """The registered loader that claims ``name`` (a trmlab run directory, ...), or None for transformers."""
    return next((ld for ld in _loaders() if ld.accepts(name)), None)


def check_hf_path(name: str) -> None:
    """An existing directory that transformers cannot read gets a one-line explanation, not a traceback."""
    p = Path(name).expanduser()
    if p.is_dir() and not (p / "config.json").exists():
        raise TrmError(f"{name} is neither a trmlab LM run (config.yaml + checkpoints/ from `trm train`) nor a "
                       f"transformers model directory (config.json)")


def load_hidden_state_source(name: str, max_seq_length: int = 512, device=None, torch_dtype=None,
                             **options) -> HiddenStateSource:
    """``tiny-random`` | a registered source (a trmlab LM run) | a local HF model directory | a hub name."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if name == TINY_RANDOM:
        model, tokenizer = build_tiny_random_model(max_position_embeddings=max(2048, int(max_seq_length)))
        return HFHiddenStateSource(model, tokenizer, name=TINY_RANDOM, max_seq_length=max_seq_length, device=device)
    loader = find_source_loader(name)
    if loader is not None:
        return loader.load(name, max_seq_length=max_seq_length, device=device, **options)
    return HFHiddenStateSource.from_pretrained(name, max_seq_length=max_seq_length, device=device,
                                               torch_dtype=torch_dtype)
