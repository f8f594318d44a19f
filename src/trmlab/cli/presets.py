"""`trm presets` and `trm info <preset>`: what can be trained, and how big its model is."""

from __future__ import annotations

from pathlib import Path

from trmlab.cli.common import data_root
from trmlab.config import list_presets, load_config, preset_dict


def presets_arguments(p):
    pass


def presets(args):
    for name in list_presets():
        d = preset_dict(name)
        print(f"{name:<18} {d.get('task', ''):<8} {d.get('description', '')}")


def info_arguments(p):
    p.add_argument("preset", help="preset name, YAML file or run directory")
    p.add_argument("overrides", nargs="*")
    data_root(p, help="LM: where the data is built (its tokenizer's real size "
                                                        "sets the embedding table)")


def info(args):
    from trmlab.api import build_model
    from trmlab.recursion import count_parameters, model_summary
    cfg = load_config(args.preset, args.overrides)
    vocab = _lm_vocab(cfg, args.preset, args.data_root) if cfg.task == "lm" else ""
    model = build_model(cfg)
    c = count_parameters(model)
    sizes = f"params {c['params']:,}"
    if c["puzzle_emb_params"]:   # only puzzle tasks with per-puzzle ids have the table the paper leaves out
        sizes += f" (without puzzle-embedding table {c['params_without_puzzle_emb']:,})"
    if cfg.task == "lm":
        from trmlab.tasks.lm import non_embedding_params
        sizes += f" (non-embedding {non_embedding_params(model):,}; {vocab})"
    depth = model_summary(model, cfg).split(" | ", 1)[1]   # the effective-depth part, worded in one place
    print(f"{cfg.name}: {sizes} | {depth}")


def _lm_vocab(cfg, preset: str, data_root: str) -> str:
    """Fill model.vocab_size with the real tokenizer's size when known, and say where the size came from:
    the embedding and head are most of a small LM, so a count from the configured size can be far off."""
    from trmlab.tasks.lm import built_vocab, padded_vocab
    m = cfg.model
    if m.vocab_size:   # a run's config.yaml holds the size its weights have; otherwise an override set it
        return f"vocab {m.vocab_size} as {'trained' if (Path(preset) / 'config.yaml').is_file() else 'configured'}"
    built = built_vocab(cfg, data_root)
    if built is None:
        m.vocab_size = padded_vocab(cfg.data.vocab_size)
        return f"vocab {m.vocab_size} from data.vocab_size; no tokenizer built in {data_root}/ yet, it may be smaller"
    n, tokenizer = built
    m.vocab_size = padded_vocab(n)
    return f"vocab {m.vocab_size} = the {n} tokens of {tokenizer}, padded"
