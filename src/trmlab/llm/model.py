"""The source LLM: the project's offline one, a local HF directory or a hub name; or only its architecture.

``llm_config(name)`` never needs weights: the offline LLM's config is built from its spec, a local directory's is
read from its ``config.json``, and SmolLM3-3B's is built locally from ``transformers.SmolLM3Config`` (whose
defaults are that checkpoint's architecture: hidden size 2048, 36 layers). ``meta_model(config)`` instantiates
the architecture on the meta device (no memory), so sizes can be checked and parameters counted offline.
``load_llm(name)`` loads the weights, from the local Hugging Face cache when there is no network, and fails with
one line saying what is missing when they are not there.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trmlab.errors import TrmError
from trmlab.llm.tiny import TINY_NAME, TinyLLMSpec, build_tokenizer, ensure_tiny_llm, tiny_llm_dir

SMOLLM3 = "HuggingFaceTB/SmolLM3-3B"


def _smollm3_config():
    from transformers import SmolLM3Config
    return SmolLM3Config()  # the defaults are SmolLM3-3B's architecture


BUILTIN_CONFIGS = {SMOLLM3: _smollm3_config}


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def llm_config(name: str, spec: TinyLLMSpec | None = None):
    """The LLM's ``PretrainedConfig`` without loading any weights."""
    if name == TINY_NAME:
        from transformers import LlamaConfig
        spec = spec or TinyLLMSpec()
        tok = build_tokenizer()
        return LlamaConfig(vocab_size=len(tok), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                           num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                           num_key_value_heads=spec.num_heads, tie_word_embeddings=True)
    from transformers import AutoConfig

    from trmlab.llm.pretrained import gguf_config, is_gguf
    if is_gguf(name):
        return gguf_config(name)
    if Path(name).expanduser().is_dir():
        try:
            return AutoConfig.from_pretrained(name)
        except Exception as e:
            raise TrmError(f"{name}: not a Hugging Face model directory ({_first_line(e)})") from None
    if name in BUILTIN_CONFIGS:
        return BUILTIN_CONFIGS[name]()
    from trmlab.data.hidden_states import hub_reachable
    try:
        return AutoConfig.from_pretrained(name, local_files_only=not hub_reachable())
    except Exception as e:
        raise TrmError(f"cannot get the config of LLM {name}: not a local directory, not in the local Hugging Face "
                       f"cache and no network ({_first_line(e)})") from None


def llm_dims(config) -> tuple[int, int]:
    """(hidden size D, number of decoder layers) of an LLM config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    d = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    n = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    if not d or not n:
        raise TrmError(f"cannot tell the hidden size and depth of {type(config).__name__}")
    return int(d), int(n)


def meta_model(config):
    """The LLM's architecture with no weights (meta device): constructs a 3B model in well under a second."""
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def load_llm(name: str, spec: TinyLLMSpec | None = None, cache_root: str | Path = "data/llm", device="cpu",
             dtype: str = "float32", log=print):
    """(model in eval mode, tokenizer with a pad token, left padding). Trains the offline LLM on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trmlab.data.hidden_states import hub_reachable
    from trmlab.llm.pretrained import is_gguf, resolve_model_path
    path, offline = name, False
    if name == TINY_NAME:
        path = str(ensure_tiny_llm(spec or TinyLLMSpec(), cache_root, log))
    elif is_gguf(name):
        path = resolve_model_path(name, log)
    elif not Path(name).expanduser().is_dir():
        offline = not hub_reachable()
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()   # one bar per load is noise in logs and tests
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=offline)
    except Exception as e:
        where = "no network and not in the local Hugging Face cache" if offline else _first_line(e)
        raise TrmError(f"the weights of LLM {name} are not available ({where}); download them where there is a "
                       f"network (huggingface-cli download {name}) or set data.llm to a local directory") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model.to(device).eval(), tokenizer


__all__ = ["llm_config", "llm_dims", "meta_model", "load_llm", "tiny_llm_dir", "SMOLLM3", "TINY_NAME"]
