"""`trm latent {data,train,rl}`: seed 001's phases 2 and 3 from the command line. Thin: parse, call the library.

    trm latent data latent-tiny                       # trains the offline LLM on first use, builds the pairs
    trm latent train latent-tiny train.steps=600      # phase 2 through the one trainer -> runs/latent-tiny
    trm latent rl runs/latent-tiny rl.steps=60        # phase 3: GRPO from that run's TRM -> runs/latent-tiny-rl
    trm latent rl latent-tiny rl.mode=think           # plain GRPO on full thinking (no TRM needed)
    trm latent data latent-smollm3                    # SmolLM3-3B: needs its weights (one-line error if absent)

On a busy CPU, ``--threads 1`` avoids the thread oversubscription that makes 2-thread BLAS crawl.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

from trmlab.cli.common import run_options, threads
from trmlab.cli.train import run_dir_of
from trmlab.config import _apply, load_config, preset_dict
from trmlab.errors import TrmError


def latent_arguments(p):
    p.add_argument("action", choices=["data", "train", "rl"],
                   help="data: build the phase-2 pairs; train: phase 2 (TRM); rl: phase 3 (GRPO)")
    p.add_argument("preset", help="a preset (latent-tiny, latent-smollm3), a YAML file or a run directory "
                                  "(rl: the phase-2 run whose TRM supplies the latents)")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.steps=600 data.n_train=4000 rl.steps=60")
    run_options(p, name_help="run name (default: the preset's name; rl: <name>-rl)")
    threads(p, help="torch CPU threads (0 = torch default)")


def latent(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    return {"data": _data, "train": _train, "rl": _rl}[args.action](args)


def _split_overrides(overrides: list[str]) -> tuple[list[str], dict]:
    """Config overrides, and the ``rl.*`` ones (also accepted bare when only RLConfig has the key)."""
    from trmlab.config import RLConfig
    rl_keys = {f.name for f in fields(RLConfig)}
    cfg_over, rl_over = [], {}
    for item in overrides:
        key, _, value = item.partition("=")
        if key.startswith("rl."):
            rl_over[key[3:]] = value
        elif key in rl_keys and key not in ("seed",):
            rl_over[key] = value
        else:
            cfg_over.append(item)
    return cfg_over, rl_over


def _config(args, overrides):
    cfg = load_config(args.preset, overrides)
    if cfg.task != "latent":
        raise TrmError(f"{args.preset} is a '{cfg.task}' config; trm latent needs task: latent (e.g. latent-tiny)")
    return cfg


# ------------------------------------------------------------------------------------------------ data
def _data(args):
    from trmlab.llm.latent_pairs import build_latent_pairs
    cfg = _config(args, args.overrides)
    path = build_latent_pairs(cfg.data, args.data_root)
    import json
    meta = json.loads((path / "metadata.json").read_text())
    print(f"{path}: {meta['splits']['train']} train / {meta['splits']['test']} test pairs; LLM {meta['llm']} "
          f"(D={meta['d_model']}, layer {meta['layer']} of {meta['n_layers']}) -> D'={meta['d_compressed']}, "
          f"x [{meta['n_context']}, D'], target [{meta['n_latent']}, D']")
    print_accuracy_table(meta["baselines"], n=meta["splits"]["test"])


def print_accuracy_table(acc: dict, latent: float | None = None, n: int | None = None):
    rows = [("no thinking", acc.get("nothink", acc.get("nothink_acc"))),
            ("full thinking", acc.get("think", acc.get("think_acc"))),
            ("latent thinking (TRM)", latent),
            ("mean training latent injected", acc.get("mean_latent_acc")),
            ("true target injected (compressed)", acc.get("oracle", acc.get("oracle_acc"))),
            ("true target injected (uncompressed)", acc.get("oracle_raw", acc.get("oracle_raw_acc")))]
    print(f"answer accuracy on {n if n is not None else 'the'} held-out problems:")
    for name, v in rows:
        if v is not None:
            print(f"  {name:<38} {v:.3f}")


# ------------------------------------------------------------------------------------------------ train
def _train(args):
    from trmlab.train.trainer import train
    cfg = _config(args, args.overrides)
    if args.name:
        cfg.name = args.name
    run_dir = run_dir_of(args, cfg, "latent")
    s = train(cfg, run_dir, resume=args.resume, overwrite=args.overwrite, data_root=args.data_root, quiet=args.quiet)
    m = s["eval"]
    print(f"{run_dir}: {s['steps']} steps, {s['train_time_s']:.0f} s ({s['s_per_step'] * 1000:.0f} ms/step)")
    print("cosine to the target by supervision step: " + " ".join(f"{c:.3f}" for c in m["cosine_per_step"])
          + f" (the mean training target alone: {m['mean_target_cosine']:.3f}; centered: {m['centered_cosine']:.3f})")
    print(f"mse {m['mse']:.4f} | ACT steps used {m['steps_mean']:.2f} | cos > {cfg.data.halt_cosine}: "
          f"{m['halt_frac']:.3f}")
    print_accuracy_table(m, latent=m.get("latent_acc"), n=m["n"])


# ------------------------------------------------------------------------------------------------ rl
def _rl(args):
    from trmlab.config import RLConfig
    from trmlab.llm.grpo import run_grpo
    cfg_over, rl_over = _split_overrides(args.overrides)
    phase2 = None
    path = Path(args.preset)
    if path.is_dir() and (path / "config.yaml").exists():
        phase2 = path
    cfg = _config(args, cfg_over)
    rl = RLConfig()
    _apply(rl, rl_over, "rl.")
    rl.__post_init__()
    if rl.mode != "latent":
        phase2 = None
    elif phase2 is None:   # fail before any data or LLM is loaded
        raise TrmError(f"trm latent rl in mode=latent takes a phase-2 run directory (trm latent train ... first), "
                       f"not {args.preset!r}; or set rl.mode=nothink / think")
    name = args.name or f"{cfg.name or preset_dict(args.preset).get('name', 'latent')}-rl"
    if args.resume:
        print("trm latent rl: GRPO keeps no mid-run checkpoint; an unfinished attempt restarts at step 0")
    s = run_grpo(cfg, rl, Path(args.runs_dir) / name, phase2, args.data_root, overwrite=args.overwrite)
    print(f"{Path(args.runs_dir) / name}: GRPO {s['mode']}, seed {s['seed']}, {s['steps']} steps, "
          f"{s['step_time_s']:.2f} s/step ({s['s_per_step']:.2f} with the evaluations)")
    print(f"training reward (sampled accuracy): first {s['reward_window']} steps {s['reward_first']:.3f} -> last "
          f"{s['reward_window']} {s['reward_last']:.3f} ({s['reward_gain']:+.3f})")
    print("held-out greedy accuracy: " + ", ".join(f"step {k}: {v:.3f}" for k, v in s["eval_acc"]))
    if s["eval_reward"]:
        print("held-out expected reward: " + ", ".join(f"step {k}: {v:.3f}" for k, v in s["eval_reward"]))
