"""Seed 004's scaling studies as data: a base preset plus, per experiment, the ``key=value`` overrides of `trm train`.

12 studies, 67 experiments, ids as the seed names them (exp01a, exp02a_01, ..., contrib02_adaptive), around the
baseline that replicates the paper (preset ``sudoku-paper``). Override values may be relative to the base:
``train.lr=*0.3`` multiplies the base's value, so a study keeps its meaning on another base preset of the same task
(``trm study run exp10 --base sudoku``); `check_applies` stops a run whose experiments set keys the base's task lacks.
`resolve` turns an experiment into concrete overrides, and ``--scale tiny`` appends `tiny_overrides`, which shrink
every experiment the same way so a whole study runs on a CPU in minutes.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from trmlab.config import _resolve_key, from_dict, preset_dict
from trmlab.config import parse_overrides as _parse_overrides
from trmlab.errors import TrmError

BASE_PRESET = "sudoku-paper"


@dataclass(frozen=True)
class Experiment:
    id: str
    overrides: tuple[str, ...] = ()
    note: str = ""


@dataclass
class Study:
    name: str
    title: str
    question: str
    experiments: list[Experiment]
    base: str = BASE_PRESET
    x: str = ""                     # the results column this study varies (plots and fits use it)
    fit: bool = False               # fit acc = a - b * x^(-c) against ``x``
    arch: bool = False              # the seed keeps these experiments' settings in architecture configs
    demo_budget: str = "steps"      # --scale demo: each run a fixed number of optimizer steps, or of minutes (time)


def _exp(id_: str, *overrides: str, note: str = "") -> Experiment:
    return Experiment(id_, tuple(overrides), note)


# Batch study: the seed scales the global batch around its baseline with LR ~ sqrt(batch) and a fixed number of
# epochs. Our baseline is the paper's batch 768 (the seed's 6144 is 768 x 8 TPU workers), so the sweep is written
# as factors of the base: the same ratios, and exp06_c is the baseline on any base preset.
_BATCH_FACTORS = (0.25, 0.5, 1, 2, 4, 8)

STUDIES: list[Study] = [
    Study("model_size", "Model size scaling", "How does accuracy scale with width (parameters)?",
          [_exp(f"exp01{c}", f"model.n_embd={d}", f"model.n_head={h}")
           for c, d, h in zip("abcdef", (256, 384, 512, 768, 1024, 1536), (4, 6, 8, 8, 8, 8))],
          # demo scale at equal compute: at equal steps the widest model would cost 6x the baseline's time; with
          # the compute held fixed the study asks what a CPU user asks (which width is best for my minutes?)
          x="params", fit=True, arch=True, demo_budget="compute"),
    Study("recursion_depth", "Recursion depth scaling", "How many latent updates n (L_cycles) and recursions T "
          "(H_cycles) are worth their compute?",
          [_exp(f"exp02a_{i:02d}", f"model.n_loops={n}") for i, n in enumerate((2, 4, 6, 8, 10, 12), 1)]
          + [_exp(f"exp02b_{i:02d}", f"model.T_recursion={t}") for i, t in enumerate((1, 2, 3, 4, 5), 1)],
          x="recursions_per_step", arch=True),
    Study("depth_vs_recursion", "Depth vs recursion", "Can recursion replace layers at similar depth?",
          [_exp(f"exp03{c}", f"model.n_layer={layers}", f"model.n_loops={n}")
           for c, layers, n in zip("abcde", (1, 2, 3, 4, 6), (12, 6, 4, 3, 2))],
          x="effective_depth", arch=True, demo_budget="compute"),  # "at similar compute": held equal
    Study("data_scaling", "Data scaling", "How many training puzzles and augmentations are needed?",
          # subsample_size counts puzzles when the data comes from a CSV/HF source, n_train when generated.
          [_exp(f"exp04a_{n}", f"data.subsample_size={n}", f"data.n_train={n}") for n in (100, 250, 500, 1000, 2000, 5000)]
          + [_exp(f"exp04b_{a:04d}", f"data.num_aug={a}") for a in (10, 100, 500, 1000, 2000)],
          x="train_examples", fit=True),
    Study("supervision_steps", "Supervision steps", "How many deep-supervision steps (N_sup) pay off?",
          [_exp(f"exp05_{c}", f"model.n_sup_train={n}", f"model.n_sup_inference={n}")
           for c, n in zip("abcdef", (4, 8, 12, 16, 24, 32))],
          x="model.n_sup_inference", arch=True),
    Study("batch_size", "Batch size scaling", "Where is the critical batch size (LR ~ sqrt(batch), fixed epochs)?",
          [_exp(f"exp06_{c}", f"train.batch_size=*{f:g}", f"train.lr=*{math.sqrt(f):.6g}",
                f"train.puzzle_emb_lr=*{math.sqrt(f):.6g}", f"train.steps=*{1 / f:g}")
           for c, f in zip("abcdef", _BATCH_FACTORS)],
          x="train.batch_size"),
    Study("precision", "Precision", "Does bfloat16 (or float16) autocast cost accuracy?",
          [_exp("exp07a", "train.dtype=float32"), _exp("exp07b", "train.dtype=bfloat16"),
           _exp("exp07c", "train.dtype=float16", note="autocast only, no loss scaling")],
          x="train.dtype", arch=True),
    Study("ema", "EMA ablation", "How much does the EMA of the weights matter, and at what rate?",
          [_exp("exp08a", "train.ema_decay=0", note="no EMA")]
          + [_exp(f"exp08{c}", f"train.ema_decay={r}") for c, r in zip("bcde", (0.99, 0.995, 0.999, 0.9995))],
          x="train.ema_decay"),
    Study("optimizer", "Optimizer comparison", "AdamATan2 vs AdamW (three beta2) vs Lion.",
          [_exp("exp09a", "train.optimizer=adam_atan2", "train.beta2=0.95"),
           _exp("exp09b", "train.optimizer=adamw", "train.beta2=0.95"),
           _exp("exp09c", "train.optimizer=adamw", "train.beta2=0.99"),
           _exp("exp09d", "train.optimizer=adamw", "train.beta2=0.999"),
           _exp("exp09e", "train.optimizer=lion", "train.beta2=0.99")],
          x="train.optimizer"),
    Study("lr_schedule", "Learning-rate schedule", "Constant LR at three scales vs cosine decay to 0.1 / 0.01.",
          [_exp("exp10a", "train.lr=*0.3", "train.puzzle_emb_lr=*0.3", "train.schedule=constant"),
           _exp("exp10b", "train.lr=*1", "train.schedule=constant"),
           _exp("exp10c", "train.lr=*3", "train.puzzle_emb_lr=*3", "train.schedule=constant"),
           _exp("exp10d", "train.schedule=cosine", "train.min_lr_ratio=0.1"),
           _exp("exp10e", "train.schedule=cosine", "train.min_lr_ratio=0.01")],
          x="train.lr"),
    Study("curriculum", "Curriculum recursion", "Does ramping n and T up during training converge faster?",
          [_exp("contrib01_baseline", "train.curriculum=none"),
           _exp("contrib01_curriculum", "train.curriculum=linear", "train.curriculum_n_loops=2",
                "train.curriculum_T_recursion=1", note="n 2->6, T 1->3 over the first fifth of training")],
          x="train.curriculum"),
    Study("adaptive_halting", "Adaptive halting", "Can ACT stop early at inference without losing accuracy?",
          [_exp("contrib02_baseline", "train.act_exploration=0.1"),
           _exp("contrib02_adaptive", "train.act_exploration=0.3", "train.act_exploration_final=0.05",
                note="exploration annealed 0.3 -> 0.05")],
          x="train.act_exploration", arch=True),
]

# Issue 20's looped-model comparison (Saunshi et al., arXiv 2502.17416, compare looped and deeper models at equal
# parameters and at equal FLOPs): the 2-layer core applied 3 times (preset looped-lm) against a 6-layer GPT (equal
# compute per token, 3x the parameters) and a 2-layer GPT (equal parameters), at two widths, on the offline
# synthetic corpus and on real English (Python's own documentation, data.source=pydoc). Equal steps = equal tokens.
_LOOPED_MODELS = (("looped", ()),
                  ("gpt_deep", ("model.arch=gpt", "model.n_layer=6", "model.n_loops=1")),
                  ("gpt_same", ("model.arch=gpt", "model.n_loops=1")))
STUDIES.append(
    Study("looped_lm", "Looped LM vs deeper and same-size GPTs",
          "Does a 2-layer core looped 3 times match a 6-layer GPT (equal compute) or only a 2-layer GPT (equal "
          "parameters), per token and per FLOP?",
          [_exp(f"exp20_{corpus}_d{width}_{name}", f"data.source={corpus}", f"model.n_embd={width}", *over)
           for corpus in ("synthetic", "pydoc") for width in (64, 128) for name, over in _LOOPED_MODELS],
          base="looped-lm", x="effective_depth"))

BASELINE = Experiment("baseline", (), "the paper's Sudoku-Extreme setup (preset sudoku-paper)")


def get_study(name: str) -> Study:
    for s in STUDIES:
        if s.name == name:
            return s
    raise TrmError(f"unknown study '{name}'; studies: {', '.join(s.name for s in STUDIES)}")


def study_of(exp_id: str) -> Study | None:
    return next((s for s in STUDIES if any(e.id == exp_id for e in s.experiments)), None)


def all_experiments(studies: list[Study] | None = None) -> list[tuple[Study | None, Experiment]]:
    return [(s, e) for s in (studies or STUDIES) for e in s.experiments]


def select(patterns: list[str], studies: list[Study] | None = None) -> tuple[list[tuple[Study, Experiment]], list[str]]:
    """Experiments matched by study names, exact ids, id prefixes (``exp02a``) or globs (``exp0[12]*``).

    Returns (matches in spec order without duplicates, the patterns that matched nothing).
    """
    studies = studies or STUDIES
    pool = all_experiments(studies) + ([(Study("baseline", "Baseline", "", [BASELINE]), BASELINE)]
                                       if studies is STUDIES else [])
    chosen, unmatched = [], []
    for pat in patterns:
        # An exact study name or id selects just that; only a pattern that is neither is a prefix (exp04a_100 is not
        # a prefix of exp04a_1000 here) or a glob.
        hits = [(s, e) for s, e in pool if pat == s.name or pat == e.id]
        if not hits:
            hits = [(s, e) for s, e in pool
                    if (fnmatch.fnmatchcase(e.id, pat) if any(c in pat for c in "*?[") else e.id.startswith(pat))]
        if not hits:
            unmatched.append(pat)
        chosen += [h for h in hits if h not in chosen]
    order = {id(e): i for i, (_, e) in enumerate(pool)}
    return sorted(chosen, key=lambda se: order[id(se[1])]), unmatched


# ----------------------------------------------------------------------------------------------------------
# Turning an experiment into concrete `trm train` overrides.

def parse_overrides(overrides, d: dict) -> dict:
    """config.parse_overrides on a deep copy: it writes into the nested sections of the dict it is given."""
    return _parse_overrides(list(overrides), copy.deepcopy(d))


def _get(d: dict, path: str):
    node = d
    for p in path.split("."):
        node = node[p]
    return node


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def absolute(overrides, full: dict) -> list[str]:
    """Rewrite relative values (``key=*f``) as absolute ones against ``full`` (a resolved config dict)."""
    out, d, applied = [], full, 0
    for item in overrides:
        key, _, raw = item.partition("=")
        if raw.startswith("*"):
            d, applied = parse_overrides(out[applied:], d), len(out)  # the value as the earlier overrides left it
            try:
                factor = float(raw[1:])
            except ValueError:
                raise TrmError(f"override '{item}': a relative value is *<number>, e.g. train.lr=*0.5") from None
            paths = _resolve_key(key, d)
            try:
                base = _get(d, paths[0])
            except (KeyError, TypeError):
                raise TrmError(f"unknown config key '{key}' in relative override '{item}'") from None
            if isinstance(base, bool) or not isinstance(base, (int, float)):
                raise TrmError(f"override '{item}': {paths[0]} is not a number ({base!r})")
            value = max(1, round(base * factor)) if isinstance(base, int) else base * factor
            item = f"{key}={_fmt(value)}"
        out.append(item)
    return out


@functools.lru_cache(maxsize=None)
def _base_dict(base: str, stamp: float) -> dict:
    return from_dict(preset_dict(base)).to_dict()


def base_dict(base: str) -> dict:
    """The base preset with every default filled in (so relative overrides find a value); cached per file version."""
    path = Path(base) if Path(base).suffix else Path(__file__).parent.parent / "presets" / f"{base}.yaml"
    stamp = path.stat().st_mtime if path.is_file() else 0.0
    return copy.deepcopy(_base_dict(base, stamp))


# --scale tiny: width and data shrink by constant factors; steps and batch are rescaled so that the base preset
# gets TINY_STEPS steps at batch TINY_BATCH (ratios between experiments, e.g. the batch study's, are kept).
TINY_STEPS = 120
TINY_BATCH = 16
TINY_WIDTH_DIV = 8
TINY_DATA_DIV = 10       # training puzzles
TINY_AUG_DIV = 10        # augmentations per puzzle (exp04b's 10:100:500:1000:2000 stay exact)
TINY_EVAL = 100          # held-out puzzles


def tiny_overrides(cfg: dict, base: dict) -> list[str]:
    """Overrides that shrink the resolved config ``cfg`` (a dict) relative to its base preset ``base``."""
    m, t, data = cfg["model"], cfg["train"], cfg.get("data") or {}
    step_f = TINY_STEPS / max(base["train"]["steps"], 1)
    steps = max(10, round(t["steps"] * step_f))
    heads = m["n_head"] if m["core"] == "attention" else 1
    multiple = max(heads, 8) if m["core"] == "attention" else 8
    width = max(multiple, round(m["n_embd"] / TINY_WIDTH_DIV / multiple) * multiple)
    out = [f"model.n_embd={width}", f"train.steps={steps}",
           f"train.batch_size={max(4, round(t['batch_size'] * TINY_BATCH / max(base['train']['batch_size'], 1)))}",
           f"train.warmup_steps={round(t['warmup_steps'] * step_f)}",
           f"train.log_interval={max(1, steps // 40)}", "train.eval_interval=0",
           f"train.ckpt_interval={max(1, steps // 4)}",
           f"train.eval_samples={min(t['eval_samples'] or TINY_EVAL, TINY_EVAL)}"]
    if t.get("curriculum_steps"):
        out.append(f"train.curriculum_steps={max(1, round(t['curriculum_steps'] * step_f))}")
    if m["core"] == "attention" and m.get("n_kv_head") and width % m["n_kv_head"]:
        out.append("model.n_kv_head=0")
    if cfg.get("task") == "sudoku" and "n_train" in data:
        # Tiny never downloads: puzzles are generated; a CSV/HF subsample size becomes the generated count.
        puzzles = data["subsample_size"] if data.get("source") != "generate" and data.get("subsample_size") \
            else data["n_train"]
        out += ["data.source=generate", f"data.n_train={max(16, puzzles // TINY_DATA_DIV)}",
                f"data.subsample_size={data.get('subsample_size', 0) // TINY_DATA_DIV}",
                f"data.n_test={min(data.get('n_test') or TINY_EVAL, TINY_EVAL)}",
                f"data.num_aug={_tiny_aug(data.get('num_aug') or 0)}"]
    return out


def _tiny_aug(n: int) -> int:
    """Augmentations per puzzle at tiny scale: ÷ TINY_AUG_DIV, but never 0 where the experiment asked for some."""
    return max(1, n // TINY_AUG_DIV) if n > 0 else 0


def missing_keys(exp: Experiment, base: str) -> list[str]:
    """The keys ``exp`` sets that the base preset's task has no config entry for (e.g. data.subsample_size on maze)."""
    d, out = base_dict(base), []
    for item in exp.overrides:
        key = item.partition("=")[0]
        try:
            _get(d, _resolve_key(key, d)[0])
        except (KeyError, TypeError, TrmError):
            out.append(key)
    return out


def check_applies(selection: list[tuple[Study, Experiment]], base: str):
    """TrmError (one line) when experiments set keys that exist on their own base but not on ``base``'s task.

    Such an experiment has no meaning there (data.subsample_size on a maze, data.n_train on a language model), so
    the whole run stops before anything starts rather than running half a study.
    """
    if not base:
        return
    bad: dict[tuple[str, ...], list[str]] = {}
    for study, exp in selection:
        if study.base == base:
            continue
        keys = tuple(k for k in missing_keys(exp, base) if k not in missing_keys(exp, study.base))
        if keys:
            bad.setdefault(keys, []).append(exp.id)
    if bad:
        task = base_dict(base).get("task", "?")
        one = sum(map(len, bad.values())) == 1
        parts = [f"{', '.join(ids)} set{'s' if len(ids) == 1 else ''} {', '.join(keys)}" for keys, ids in bad.items()]
        raise TrmError(f"{'; '.join(parts)}, which task '{task}' (base {base}) has no config key for: "
                       f"{'this experiment does' if one else 'these experiments do'} not apply to {task}; "
                       f"leave {'it' if one else 'them'} out")


# --scale demo: each experiment on the demo's own model family and data (the task's `demo_preset`: `sudoku` for
# Sudoku studies, `maze` for maze ones). What an experiment changes is carried over from its study's base: sizes
# (width, batch, LR, steps, training puzzles, augmentations) as ratios to the base's value, so exp01's 256..1536 on
# the paper's 512 become 48..288 on the demo's 96; everything else (n_loops, T, N_sup, layers, EMA, optimizer,
# schedule, halting) as the experiment sets it, since that is what the studies measure. A run's budget is either
# optimizer steps (DEMO_STEP_FRACTION of the demo preset's for the base experiment; the batch study keeps its
# fixed-epoch ratios), or compute (the training FLOPs of the base experiment's steps, so a run whose step costs 3x
# gets a third of the steps: equal wall time on a quiet machine, and unlike a clock the same on a busy one), or
# wall time (minutes, as `trm demo` compares; a busy machine gives a run fewer steps).
SCALES = ("tiny", "demo", "full")
BUDGETS = ("steps", "compute", "time")
# Of the demo preset's own steps: Sudoku 400, where the demo's TRM solves 58 % of held-out puzzles (0 % at step 200,
# 8.5 % at 300: the budget sits past the jump, so differences show in exact accuracy, not only in blank cells); maze 1000.
DEMO_STEP_FRACTION = 2 / 3
DEMO_MINUTES = 2.5
RATIO_KEYS = ("model.n_embd", "train.batch_size", "train.lr", "train.puzzle_emb_lr", "train.embedding_lr",
              "train.steps", "train.warmup_steps")


def flatten(d: dict | None, prefix: str = "") -> dict:
    """A nested config dict as dotted keys: {"model": {"n_embd": 96}} -> {"model.n_embd": 96}."""
    out = {}
    for k, v in (d or {}).items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def demo_preset(base: str) -> str:
    """The preset --scale demo runs ``base``'s task on (TrmError for a task without one)."""
    task = _task(base_dict(base))
    if not task.demo_preset:
        raise TrmError(f"--scale demo is defined for the Sudoku and maze studies; base {base} is task '{task.name}' "
                       f"(use --scale tiny or full)")
    return task.demo_preset


def _task(d: dict):
    from trmlab.tasks import get_task
    return get_task(d.get("task", "sudoku"))


def _round_width(value: float, cfg: dict) -> int:
    heads = cfg["model"]["n_head"] if cfg["model"]["core"] == "attention" else 1
    multiple = max(heads, 8)
    return max(multiple, round(value / multiple) * multiple)


def demo_overrides(exp: Experiment, study_base: str, target: str = "", budget: str = "steps") -> list[str]:
    """Overrides of the demo preset of ``target``'s task (default: the study's) that run ``exp``, an experiment of
    a study written on ``study_base`` (whose values the ratios are taken against)."""
    if budget not in BUDGETS:
        raise TrmError(f"--budget must be one of {', '.join(BUDGETS)}, got '{budget}'")
    full = base_dict(study_base)
    fam = base_dict(demo_preset(target or study_base))
    mine = flatten(from_dict(parse_overrides(absolute(exp.overrides, full), full)).to_dict())
    ref, task, flat_fam = flatten(full), _task(fam), flatten(fam)
    size_keys = _task(full).train_size_keys
    # what the experiment sets, also where it equals its base (exp02a_03's n_loops=6 is the paper's, not the demo's)
    named = {p for item in exp.overrides for p in _resolve_key(item.partition("=")[0], full)}
    out = []
    for key, value in mine.items():
        if key == "name" or (value == ref.get(key) and key not in named):
            continue
        if key in size_keys:   # training puzzles: a ratio to the base's count, on the demo task's own keys
            n = max(1, round(value / max(ref[key], 1) * flat_fam[task.train_size_keys[0]]))
            out += [f"{k}={n}" for k in task.train_size_keys if f"{k}={n}" not in out]
        elif key == "data.num_aug":
            out.append(f"data.num_aug={_demo_aug(value, ref[key], flat_fam.get(key, 0), task.max_augmentations)}")
        elif key in RATIO_KEYS:
            scaled = value / ref[key] * flat_fam[key]
            v = _round_width(scaled, fam) if key == "model.n_embd" else \
                max(1, round(scaled)) if isinstance(value, int) else scaled
            out.append(f"{key}={_fmt(v)}")
        elif key in flat_fam:
            out.append(f"{key}={_fmt(value)}")
    steps = {k.partition("=")[0]: k.partition("=")[2] for k in out}.get("train.steps")
    ratio = float(steps) / flat_fam["train.steps"] if steps else 1.0
    out = [o for o in out if not o.startswith("train.steps=")]
    n = max(10, round(DEMO_STEP_FRACTION * flat_fam["train.steps"] * ratio))
    if budget == "compute":   # the base experiment's training FLOPs: fewer steps for a costlier step
        n = max(10, round(n * _step_flops(fam, []) / _step_flops(fam, out)))
    if budget in ("steps", "compute"):
        out += [f"train.steps={n}", f"train.ckpt_interval={max(1, n // 4)}"]
    else:   # every run the same minutes; the step cap is never reached
        out += [f"train.time_budget_s={DEMO_MINUTES * 60:g}", "train.steps=1000000", "train.ckpt_interval=100"]
    return out + ["train.eval_interval=0", "train.eval_samples=0"]


def step_flops_of(cfg) -> float:
    """Training FLOPs of one optimizer step of ``cfg`` (a Config), by the project's FLOP model; the model is built
    on the meta device (shapes only: no memory, no initialisation)."""
    import torch

    from trmlab.api import build_model
    from trmlab.eval.flops import model_flops
    with torch.device("meta"):
        model = build_model(cfg)
    return model_flops(cfg, model)["flops_per_step"]


def _step_flops(preset: dict, overrides: list[str]) -> float:
    """`step_flops_of` the config ``preset`` (a dict) with ``overrides``."""
    return step_flops_of(from_dict(parse_overrides(overrides, preset)))


def _demo_aug(value: int, base_value: int, demo_value: int, most: int | None) -> int:
    """Augmentations at demo scale: the experiment's ratio to its base, applied to the demo preset's count (or to
    every view the task has, where it has a fixed number), at least 1 where the experiment asks for any."""
    if value <= 0:
        return 0
    reference = most if most is not None else demo_value
    n = max(1, round(value / max(base_value, 1) * reference))
    return min(n, most) if most is not None else n


def resolve(exp: Experiment, base: str = BASE_PRESET, scale: str = "full", extra: list[str] = (),
            budget: str = "steps", study_base: str = "") -> list[str]:
    """The concrete overrides that `trm train <run_preset(base, scale)>` needs to run ``exp`` at ``scale``; validated.

    At demo scale the run's preset is the demo preset of ``base``'s task, and the experiment's sizes are read as
    ratios to ``study_base`` (the base its study was written on; default ``base``).
    """
    if scale not in SCALES:
        raise TrmError(f"--scale must be one of {', '.join(SCALES)}, got '{scale}'")
    if scale == "demo":
        preset = demo_preset(base)
        overrides = demo_overrides(exp, study_base or base, base, budget)
        resolved = from_dict(parse_overrides(overrides, base_dict(preset))).to_dict()
        overrides += absolute(extra, resolved)
        from_dict(parse_overrides(overrides, base_dict(preset)))
        return overrides
    full = base_dict(base)
    overrides = absolute(exp.overrides, full)
    if scale == "tiny" or extra:
        resolved = from_dict(parse_overrides(overrides, full)).to_dict()
        if scale == "tiny":
            tiny = tiny_overrides(resolved, full)
            overrides += tiny
            resolved = parse_overrides(tiny, resolved)
        overrides += absolute(extra, resolved)
    from_dict(parse_overrides(overrides, full))  # one-line TrmError for a bad key, type or choice
    return overrides


def budget_of(study: Study, scale: str, budget: str = "") -> str:
    """The budget a run of ``study`` gets: the one asked for, else the study's own at demo scale, else steps."""
    if budget and budget not in BUDGETS:
        raise TrmError(f"--budget must be one of {', '.join(BUDGETS)}, got '{budget}'")
    return budget or (study.demo_budget if scale == "demo" else "steps")


def study_dir(study: Study, scale: str, budget: str = "") -> str:
    """Where a study's runs go under the scale's directory: its name, with the budget when it is not the study's
    own (``recursion_depth-time``: the recursion sweep at equal wall time)."""
    b = budget_of(study, scale, budget)
    return study.name if scale != "demo" or b == study.demo_budget else f"{study.name}-{b}"


def run_preset(base: str, scale: str) -> str:
    """The preset `trm train` starts from: the study's base, or at demo scale its task's demo preset."""
    return demo_preset(base) if scale == "demo" else base


def resolved_config(exp: Experiment, base: str = BASE_PRESET, scale: str = "full", extra: list[str] = (),
                    budget: str = "steps", study_base: str = "") -> dict:
    """The full config dict the run will use (what `trm study export` writes)."""
    overrides = resolve(exp, base, scale, extra, budget, study_base)
    cfg = from_dict(parse_overrides(overrides, base_dict(run_preset(base, scale)))).to_dict()
    cfg["name"] = exp.id
    return cfg


def arch_configs(base: str = BASE_PRESET) -> dict[str, dict]:
    """The seed's 34 architecture configs: the baseline's and one per experiment of an architecture study.

    Each holds the resolved ``model`` section, plus the train keys the seed kept in its arch files (dtype, ACT
    exploration).
    """
    out = {"trm_baseline": {"model": base_dict(base)["model"]}}
    for study in STUDIES:
        if not study.arch:
            continue
        for exp in study.experiments:
            cfg = resolved_config(exp, base)
            arch = {"model": cfg["model"]}
            train_keys = [o.split("=", 1)[0].split(".", 1)[1] for o in exp.overrides if o.startswith("train.")]
            if train_keys:
                arch["train"] = {k: cfg["train"][k] for k in train_keys}
            out[f"{exp.id}_arch"] = arch
    return out


# ----------------------------------------------------------------------------------------------------------
# Studies from files (optional): {name, base, title, experiments: {id: [overrides]}} or a grid {key: [values]}.

def load_study_file(path: str | Path) -> Study:
    path = Path(path)
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise TrmError(f"{path}: cannot read study file ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict) or not (d.get("experiments") or d.get("grid")):
        raise TrmError(f"{path}: a study file needs 'experiments' (id: [key=value, ...]) or 'grid' (key: [values])")
    for key in ("experiments", "grid"):
        if not isinstance(d.get(key) or {}, dict):
            raise TrmError(f"{path}: '{key}' must map names to values (experiments: {{id: [key=value, ...]}}, "
                           f"grid: {{key: [values]}}), got {type(d[key]).__name__}")
    if not isinstance(d.get("base") or "", str):
        raise TrmError(f"{path}: base must be one preset name or path, got {d['base']!r}")
    name = str(d.get("name") or path.stem)
    # an experiment's overrides: a list, or one string of them ("model.n_embd=64 train.lr=1e-3")
    exps = [Experiment(str(i), tuple(ov.split() if isinstance(ov, str) else (str(o) for o in (ov or []))))
            for i, ov in (d.get("experiments") or {}).items()]
    grid = d.get("grid") or {}
    if grid:
        combos = [()]
        for key, values in grid.items():
            combos = [c + (f"{key}={_fmt(v)}",) for c in combos for v in (values if isinstance(values, list) else [values])]
        exps += [Experiment(f"{name}_{i:02d}", c) for i, c in enumerate(combos, 1)]
    return Study(name, str(d.get("title") or name), str(d.get("question") or ""), exps,
                 base=str(d.get("base") or BASE_PRESET), x=str(d.get("x") or ""), fit=bool(d.get("fit", False)))
