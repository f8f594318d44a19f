"""Byte-level BPE tokenizers (HF ``tokenizers``): train one on a corpus, load one, encode/decode.

Byte-level means every string round-trips exactly and there is no unknown token. ``<|endoftext|>`` is the only
special token: it is put before every document, so it is both the separator and the BOS the model conditions on.
``vocab_size`` here is the tokenizer's true size; padding the embedding table to a multiple of 64 is the model's
business.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from trmlab.errors import TrmError

EOT = "<|endoftext|>"
MIN_VOCAB = 257          # 256 byte symbols + <|endoftext|>


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise TrmError("the text pipeline needs the 'tokenizers' package: pip install 'trmlab[lm]'") from None
    return tokenizers


class Tokenizer:
    """A thin wrapper over ``tokenizers.Tokenizer`` with the few calls the LM code needs."""

    def __init__(self, hf):
        self.hf = hf
        eot = hf.token_to_id(EOT)
        if eot is None:
            raise TrmError(f"tokenizer has no {EOT} token")
        self.eot_id = eot
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # the Rust side runs this in parallel across cores
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def save(self, path: str | Path) -> None:
        self.hf.save(str(path))

    def __len__(self) -> int:
        return self.vocab_size


def train_tokenizer(docs: Iterable[str], vocab_size: int, out_path: str | Path | None = None) -> Tokenizer:
    """Train a byte-level BPE tokenizer with at most ``vocab_size`` tokens (fewer if the corpus runs out of merges)."""
    if vocab_size < MIN_VOCAB:
        raise TrmError(f"tokenizer vocab_size must be >= {MIN_VOCAB} (256 bytes + {EOT}), got {vocab_size}")
    tk = _tokenizers()
    hf = tk.Tokenizer(tk.models.BPE())
    # no prefix space: the text comes back byte for byte, and the GPT-2 regex still splits words from spaces
    hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),   # all 256 bytes, even unseen ones
        show_progress=False,
    )
    hf.train_from_iterator(docs, trainer=trainer)
    tok = Tokenizer(hf)
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        tok.save(out_path)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a ``tokenizer.json``; it must contain ``<|endoftext|>``."""
    path = Path(path)
    if not path.is_file():
        raise TrmError(f"tokenizer file {path} does not exist")
    tk = _tokenizers()
    try:
        hf = tk.Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TrmError(f"cannot load tokenizer {path}: {why}") from None
    try:
        return Tokenizer(hf)
    except TrmError as e:
        raise TrmError(f"{path}: {e}") from None
