"""Read and overwrite one decoder layer's hidden states of an HF causal LM, and generate answers with a latent.

Layer convention: ``layer = l`` means the output of decoder block l (1-based), i.e. ``output_hidden_states[l]``,
the input of block l+1. It must satisfy 1 <= l <= n_layers - 1: layer 0 (the token embeddings) does not depend on
the context, so it cannot carry a thought, and the last layer's output feeds only the logits of its own position,
so an injection there could not reach the answer tokens. ``layer = 0`` in a config means "the middle layer".

Injection: for a batch of left-padded prompts of width P, ``Injection(model, layer, latents)`` replaces, in the
prefill forward pass only, the output of block l at the last K positions (P-K .. P-1) by ``latents`` [B, K, D].
Blocks l+1 .. N then attend to the injected states, and every generated token sees them through the KV cache;
decode steps (one new position each) pass untouched. ``KeyedInjection`` does the same inside TRL's GRPO loop,
where batches are shuffled and re-padded: it finds each row's span by the closing ``</think>`` tokens and its
latent by the row's own prompt tokens.
"""

from __future__ import annotations

import contextlib

import torch

from trmlab.errors import TrmError


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of decoder blocks of an HF causal LM (Llama/Qwen/SmolLM3/Mistral: model.model.layers; GPT-2: .h)."""
    for path in ("model.layers", "model.model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise TrmError(f"cannot find the decoder layers of {type(model).__name__} (tried model.layers, transformer.h, ...)")


def resolve_layer(layer: int, n_layers: int) -> int:
    """``layer`` checked against the model (0 = the middle layer); see the module docstring for why 1..N-1."""
    if layer == 0:
        return max(1, n_layers // 2)
    if not 1 <= layer <= n_layers - 1:
        raise TrmError(f"data.layer={layer} is out of range for a {n_layers}-layer LLM: use 1..{n_layers - 1} "
                       f"(0 = middle); the embeddings carry no thought and the last layer cannot reach the answer")
    return layer


class _Stop(Exception):
    pass


def _output_tensor(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_output(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding (what ``generate`` uses), so a prompt's states do not depend on its pad."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def hidden_at(model, input_ids: torch.Tensor, mask: torch.Tensor, layer: int) -> torch.Tensor:
    """Output of decoder block ``layer`` [B, T, D]; the blocks above it are never run."""
    box = {}

    def hook(module, args, output):
        box["h"] = _output_tensor(output).detach()
        raise _Stop

    handle = decoder_layers(model)[layer - 1].register_forward_hook(hook)
    try:
        model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return box["h"]


class Injection(contextlib.AbstractContextManager):
    """While active: the prefill pass gets ``latents`` [B, K, D] written over block ``layer``'s last K positions."""

    def __init__(self, model, layer: int, latents: torch.Tensor):
        self.latents, self.handle = latents, None
        self.layer = decoder_layers(model)[layer - 1]

    def _hook(self, module, args, output):
        h = _output_tensor(output)
        k = self.latents.shape[1]
        if h.shape[1] < k or h.shape[1] == 1:   # a decode step: the span is already in the KV cache
            return output
        h = h.clone()
        h[:, -k:] = self.latents.to(h.dtype)
        return _replace_output(output, h)

    def __enter__(self):
        self.handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        return False


@torch.no_grad()
def generate(model, tokenizer, texts: list[str], max_new_tokens: int, latents: torch.Tensor | None = None,
             layer: int = 0, batch_size: int = 64, do_sample: bool = False, temperature: float = 1.0) -> list[str]:
    """Completions of ``texts`` (greedy by default); with ``latents`` [N, K, D] injected at ``layer`` (see above)."""
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    out = []
    for b in range(0, len(texts), batch_size):
        enc = tokenizer(texts[b:b + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        ctx = Injection(model, layer, latents[b:b + batch_size].to(device)) if latents is not None \
            else contextlib.nullcontext()
        with ctx:
            seq = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=do_sample, temperature=temperature if do_sample else None, top_p=None,
                                 top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        out.extend(tokenizer.batch_decode(seq[:, ids.shape[1]:], skip_special_tokens=True))
    return out


class KeyedInjection:
    """The latent hook for code that builds its own batches (TRL's GRPO): the span of each row is the K positions
    ending with its first ``close_ids`` sequence (the prompt's ``\\n</think>\\n``), its latent the one registered
    for the row's prompt tokens (left padding stripped). Rows without a registered prompt pass untouched."""

    def __init__(self, layer: int, close_ids: list[int], pad_id: int, k: int):
        self.layer_index, self.close, self.pad_id, self.k = layer, list(close_ids), pad_id, k
        self.table: dict[tuple, torch.Tensor] = {}
        self.handles, self.current = [], None
        self.hits = 0

    def register(self, prompt_ids: list[int], latent: torch.Tensor):
        self.table[tuple(prompt_ids)] = latent

    def attach(self, model):
        """Hook ``model`` (policy, reference model, ...): read its input ids, then overwrite block ``layer``."""
        self.handles.append(model.register_forward_pre_hook(self._read_ids, with_kwargs=True))
        self.handles.append(decoder_layers(model)[self.layer_index - 1].register_forward_hook(self._write))

    def detach(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    def _span(self, row: list[int]) -> int | None:
        n = len(self.close)
        for i in range(len(row) - n + 1):
            if row[i:i + n] == self.close:
                return i + n
        return None

    def _read_ids(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.current = None
        if ids is None or ids.shape[1] <= self.k:
            return None
        plan = []
        for r, row in enumerate(ids.tolist()):
            end = self._span(row)
            if end is None:
                continue
            start = next((i for i, t in enumerate(row) if t != self.pad_id), 0)
            latent = self.table.get(tuple(row[start:end]))
            if latent is not None and end >= self.k:
                plan.append((r, end, latent))
        self.current = plan or None
        return None

    def _write(self, module, args, output):
        if not self.current:
            return output
        h = _output_tensor(output).clone()
        for r, end, latent in self.current:
            h[r, end - self.k:end] = latent.to(h.device, h.dtype)
        self.hits += len(self.current)
        return _replace_output(output, h)
