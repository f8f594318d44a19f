"""Experiment configuration: dataclass schemas, YAML presets and ``key=value`` overrides, with one-line errors.

A config has four sections: ``task`` (which plug-in), ``data`` (that task's own dataclass), ``model`` and ``train``.
Presets are YAML files in ``trmlab/presets`` (a preset may name a ``base`` preset it extends); the command line
adds overrides such as ``model.n_embd=256 train.steps=2000``. A key without a section (``n_loops=3``) is accepted
when exactly one section has it, and the paper's / official code's names are aliases (``L_cycles`` = n_loops).
"""

from __future__ import annotations

import copy
import difflib
import math
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml

from trmlab.errors import TrmError

PRESET_DIR = Path(__file__).parent / "presets"

# Names used by the TRM paper, its official code and HRM, mapped to ours (see STYLE.md: keep the aliases).
ALIASES = {
    "L_cycles": "model.n_loops",
    "H_cycles": "model.T_recursion",
    "halt_max_steps": ("model.n_sup_train", "model.n_sup_inference"),
    "N_sup": ("model.n_sup_train", "model.n_sup_inference"),
    "n_sup": ("model.n_sup_train", "model.n_sup_inference"),
    "hidden_size": "model.n_embd",
    "L_layers": "model.n_layer",
    "num_heads": "model.n_head",
    "global_batch_size": "train.batch_size",
    "ema_rate": "train.ema_decay",
    "lr_warmup_steps": "train.warmup_steps",
    "mlp_t": "model.core",  # mlp_t=True -> core=mlp_mixer
    "pos_encodings": "model.pos_encoding",
    "loss_type": "train.loss",
    # seeds 000/002 run nanochat-style scripts: --depth=12 --matrix_lr=0.001 --embedding_lr=0.01
    "depth": "model.n_layer",
    "matrix_lr": "train.lr",
}


def _check_finite(obj, section: str):
    """nan/inf in a float field (train.lr=nan) would train without error and report nan: refuse it here."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise TrmError(f"{section}.{f.name} must be a finite number, got {value}")


def _at_least(obj, section: str, low: int, *names: str):
    """One-line error for the first of ``names`` below ``low`` (counts and rates that cannot be negative)."""
    for name in names:
        if getattr(obj, name) < low:
            raise TrmError(f"{section}.{name} must be >= {low}, got {getattr(obj, name)}")


def choice(default, choices: tuple, help: str = ""):
    """A string field restricted to ``choices`` (checked on every assignment through the config system)."""
    return field(default=default, metadata={"choices": choices, "help": help})


@dataclass
class ModelConfig:
    """The network: embedding, shared core, read-out, and the recursion schedule of the engine."""

    vocab_size: int = 0              # 0 = take it from the dataset
    seq_len: int = 0                 # 0 = take it from the dataset
    n_embd: int = 128                # hidden size (the paper: 512)
    n_layer: int = 2                 # blocks in the shared core (the paper: 2)
    n_head: int = 4
    n_kv_head: int = 0               # grouped-query attention; 0 = n_head
    core: str = choice("attention", ("attention", "mlp_mixer"), "token mixer of each block")
    activation_fn: str = choice("swiglu", ("swiglu", "gelu", "relu2"))
    mlp_ratio: float = 4.0
    norm: str = choice("post", ("post", "pre"), "post-norm blocks as the paper; pre-norm for deep LMs")
    pos_encoding: str = choice("rope", ("rope", "learned", "none"))
    rope_theta: float = 10000.0
    causal: bool = False
    puzzle_emb_len: int = 0          # prefix tokens carrying the puzzle-identifier embedding (the paper: 16)
    num_puzzle_ids: int = 0          # 0 = take it from the dataset
    puzzle_emb_ndim: int = 0         # numbers stored per puzzle id; 0 = puzzle_emb_len x n_embd. The paper stores
                                     # n_embd (512) and zero-pads them to the prefix: 16x smaller ARC table
    puzzle_emb_sparse: bool = True   # the paper: a buffer trained by sign-SGD on the rows a batch used
                                     # (train.puzzle_emb_lr / _weight_decay); false: a parameter of train.optimizer
    # The recursion engine (DESIGN.md). n_loops = the paper's n (L_cycles), T_recursion = T (H_cycles).
    n_loops: int = 6
    T_recursion: int = 3
    n_sup_train: int = 16            # deep-supervision steps per sample in training (the paper's N_sup)
    n_sup_inference: int = 16        # supervision steps at evaluation
    halting: str = choice("act", ("none", "act"), "ACT: a Q-head learns when the answer is right")
    q_init_bias: float = -5.0        # halt logit starts very negative: halt rarely at first (the paper)
    arch: str = choice("recursive", ("recursive", "gpt"), "gpt: a plain causal stack, no recursion (LM baseline)")

    def __post_init__(self):
        _check_finite(self, "model")
        _at_least(self, "model", 1, "n_embd", "n_layer", "n_head", "n_loops", "T_recursion", "n_sup_train",
                  "n_sup_inference")
        _at_least(self, "model", 0, "n_kv_head", "puzzle_emb_len", "num_puzzle_ids", "puzzle_emb_ndim", "vocab_size",
                  "seq_len")
        if self.mlp_ratio <= 0 or self.rope_theta <= 0:
            raise TrmError(f"model.mlp_ratio and model.rope_theta must be > 0, got {self.mlp_ratio}, {self.rope_theta}")
        if self.core == "attention" and self.n_embd % self.n_head:
            raise TrmError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if self.n_kv_head and self.n_head % self.n_kv_head:
            raise TrmError(f"model.n_head ({self.n_head}) must be divisible by model.n_kv_head ({self.n_kv_head})")

    @property
    def effective_depth(self) -> int:
        """Layers a sample passes through in training: n_layer x (n_loops + 1) x T_recursion x n_sup_train."""
        if self.arch == "gpt":
            return self.n_layer
        return self.n_layer * (self.n_loops + 1) * self.T_recursion * self.n_sup_train


@dataclass
class TrainConfig:
    """Optimisation, deep supervision, evaluation and bookkeeping."""

    steps: int = 1000                # optimizer steps
    epochs: float = 0.0              # > 0: steps = epochs x examples per epoch / batch_size, counted as the paper
                                     # does (one view of each base puzzle per epoch); replaces train.steps
    time_budget_s: float = 0.0       # > 0: also stop after this many seconds of training
    batch_size: int = 64             # global batch
    grad_accum: int = 1
    supervision: str = choice("per_step", ("per_step", "summed"),
                              "per_step: optimizer step per supervision step (the paper); summed: one backward")
    supervision_weight_base: float = 1.0   # summed: the last step weighs this many times the first
    improvement_reward_scale: float = 0.0  # summed: reward for lowering the loss from first to last step
    improvement_reward: str = choice("bounded", ("bounded", "telescoping"),
                                     "summed: bounded pays each step for beating the step before (earlier loss "
                                     "detached); telescoping is the seeds' literal, unbounded formula")
    act_exploration: float = 0.1     # per_step+ACT: share of samples forced to run a random minimum of steps
    act_exploration_final: float = -1.0  # >= 0: anneal act_exploration linearly to this over train.steps
    curriculum: str = choice("none", ("none", "linear", "step"),
                             "ramp n_loops / T_recursion up from the curriculum_* values during training")
    curriculum_steps: int = 0        # steps to reach full depth; 0 = a fifth of train.steps
    curriculum_n_loops: int = 1      # n_loops at step 0 of the curriculum
    curriculum_T_recursion: int = 1  # T_recursion at step 0 of the curriculum
    loss: str = choice("stablemax", ("stablemax", "softmax"), "token loss (the paper: stable-max CE in fp64)")
    halt_loss_weight: float = 0.5
    optimizer: str = choice("adam_atan2", ("adam_atan2", "adamw", "muon", "lion"))
    lr: float = 1e-4
    embedding_lr: float = 0.0        # 0 = lr
    puzzle_emb_lr: float = 1e-2
    weight_decay: float = 0.1
    puzzle_emb_weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    schedule: str = choice("constant", ("constant", "cosine", "linear"), "after warmup")
    warmup_steps: int = 2000
    min_lr_ratio: float = 1.0        # cosine/linear decay floor, as a fraction of lr
    grad_clip: float = 1.0           # 0 = off
    ema_decay: float = 0.999         # 0 = no EMA; otherwise evaluation uses the EMA weights
    eval_interval: int = 0           # 0 = only at the end
    eval_samples: int = 0            # 0 = the whole held-out split
    ckpt_interval: int = 0           # 0 = only at the end
    keep_checkpoints: int = 2
    keep_best: bool = False          # also keep <run>/best: the checkpoint with the best task metric at eval
    log_interval: int = 10
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda | cuda:N | mps
    dtype: str = choice("float32", ("float32", "bfloat16", "float16"), "autocast dtype (float16: no loss scaling)")
    compile: str = choice("auto", ("auto", "true", "false"),
                          "torch.compile the core's blocks; auto: for runs of >= 200 steps on CPU or CUDA")
    activation_checkpointing: bool = False  # recompute the core's blocks in backward (grad recursion only)
    fsdp: bool = False               # FSDP2: shard params/grads/optimizer over processes (torchrun)
    threads: int = 0                 # torch CPU threads; 0 = torch default
    logger: str = choice("none", ("none", "wandb", "tensorboard"), "tracker beside metrics.jsonl (optional)")

    def __post_init__(self):
        _check_finite(self, "train")
        if self.steps < 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise TrmError("train.steps must be >= 0 and train.batch_size, train.grad_accum >= 1")
        _at_least(self, "train", 0, "epochs", "time_budget_s", "lr", "embedding_lr", "puzzle_emb_lr", "weight_decay",
                  "puzzle_emb_weight_decay", "warmup_steps", "grad_clip", "halt_loss_weight", "improvement_reward_scale",
                  "curriculum_steps", "eval_interval", "eval_samples", "ckpt_interval", "threads")
        _at_least(self, "train", 1, "curriculum_n_loops", "curriculum_T_recursion", "log_interval")
        if self.threads > 1024:  # libgomp aborts the process, no Python error, when asked for many thousands
            raise TrmError(f"train.threads must be <= 1024, got {self.threads}")
        if self.supervision_weight_base <= 0:  # the weights grow geometrically from 1 to base
            raise TrmError(f"train.supervision_weight_base must be > 0, got {self.supervision_weight_base}")
        for name in ("ema_decay", "beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise TrmError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("act_exploration", "min_lr_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise TrmError(f"train.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.act_exploration_final > 1:
            raise TrmError(f"train.act_exploration_final must be <= 1 (< 0: off), got {self.act_exploration_final}")


@dataclass
class RLConfig:
    """Phase 3 of seed 001, GRPO on answer correctness (`trm latent rl`, llm/grpo.py): a GRPO run's ``rl`` section."""

    mode: str = choice("latent", ("latent", "nothink", "think"), "what the policy answers from")
    steps: int = 60
    prompts_per_step: int = 8
    num_generations: int = 8       # the group size G
    lr: float = 2e-4
    beta: float = 0.04             # KL to the reference model
    temperature: float = 1.0
    max_completion_length: int = 0  # 0 = data.max_answer_tokens (latent/nothink) or + max_think_tokens (think)
    eval_interval: int = 10
    eval_samples: int = 200
    eval_draws: int = 4            # sampled answers per held-out problem for the expected reward (0 = greedy only)
    seed: int = 0
    phase2_run: str = ""           # mode=latent: the phase-2 run whose TRM supplies the latents

    def __post_init__(self):
        _check_finite(self, "rl")
        if self.steps < 1 or self.prompts_per_step < 1 or self.num_generations < 2:
            raise TrmError("rl.steps and rl.prompts_per_step must be >= 1 and rl.num_generations >= 2 (a group)")


@dataclass
class Config:
    task: str = "sudoku"
    name: str = ""                   # run name; default: the preset name
    description: str = ""
    data: typing.Any = None          # the task's data dataclass
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rl: typing.Any = None            # RLConfig in a GRPO run (trm latent rl); no section in any other run

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.rl is None:
            del d["rl"]
        return d


# ----------------------------------------------------------------------------------------------------------
# Building a config from dicts, YAML presets and key=value overrides.

def _data_class(task: str) -> type:
    from trmlab.tasks import get_task
    return get_task(task).data_config


def _task_names() -> list[str]:
    from trmlab.tasks import TASKS
    return sorted(TASKS)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, key: str):
    """Convert a parsed YAML/CLI value to the field's type, or fail naming the key and the expected type."""
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (str,)
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, inner, key) for v in value]
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes", "on"):
                return True
            if str(value).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number = int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
            if not -2**63 <= number < 2**63:  # torch and numpy take 64-bit sizes: a larger one is a typo
                raise TrmError(f"{key}: {value!r} is out of range for a 64-bit integer")
            return number
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if isinstance(value, (list, dict)):  # str() would make "['a']" a run name or a data source
                raise ValueError
            if isinstance(value, bool):  # YAML's `compile: false` (and configs saved when it was a bool)
                return str(value).lower()
            return "" if value is None else str(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int("1e400"), an infinity
        raise TrmError(f"{key}: expected {_type_name(tp)}, got {value!r}") from None
    return value


def _apply(obj, values: dict, prefix: str):
    """Set ``values`` on dataclass ``obj`` in place, checking names, types and choices."""
    hints = typing.get_type_hints(type(obj))
    by_name = {f.name: f for f in fields(obj)}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in by_name:
            raise TrmError(f"unknown config key '{path}'{_key_hint(key, prefix, obj, isinstance(value, dict))}")
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise TrmError(f"{path}: expected a section of keys, got {value!r}")
            _apply(current, value, path + ".")
            continue
        value = _coerce(value, hints[key], path)
        choices = by_name[key].metadata.get("choices")
        if choices and value not in choices:
            raise TrmError(f"{path}: '{value}' is not one of {', '.join(choices)}")
        setattr(obj, key, value)


def _key_hint(key: str, prefix: str, obj, is_section: bool = False) -> str:
    """'; did you mean ...?' from the keys of ``obj`` and the aliases (the paper's names), or the valid keys.

    A key without a section (``n_trian=5``) is matched against the sections' own keys first, so it is offered as
    the full key (``data.n_train``), not as the section name it happens to look like (``train``); a misspelt
    section (``trian.steps=5``, ``is_section``) is matched against the section names.
    """
    names = [f.name for f in fields(obj)]
    sections = [] if prefix or is_section else [f.name for f in fields(obj) if is_dataclass(getattr(obj, f.name))]
    full = {f"{sec}.{g.name}": g.name for sec in sections for g in fields(getattr(obj, sec))}  # path -> leaf
    leaves = difflib.get_close_matches(key, sorted(set(full.values())), n=3)
    close = [path for leaf in leaves for path in full if full[path] == leaf]
    if not close:
        close = [prefix + c for c in difflib.get_close_matches(key, names, n=3)]
    for alias in difflib.get_close_matches(key, list(ALIASES), n=2, cutoff=0.7):
        target = ALIASES[alias]
        close.append(f"{alias} (= {' and '.join(target) if isinstance(target, tuple) else target})")
    if close:
        return f"; did you mean {', '.join(close)}?"
    return f"; valid keys: {', '.join(prefix + n for n in names)} (aliases: {', '.join(ALIASES)})"


def _revalidate(obj):
    """Run __post_init__ checks again after overrides (dataclasses only run them at construction)."""
    for f in fields(obj):
        if is_dataclass(getattr(obj, f.name)):
            _revalidate(getattr(obj, f.name))
    if hasattr(obj, "__post_init__"):
        obj.__post_init__()


def from_dict(d: dict) -> Config:
    """Build a validated Config from a nested dict (a preset or a saved run config)."""
    d = dict(d)
    d.pop("base", None)
    task = d.pop("task", "sudoku")
    cfg = Config(task=str(task), data=_data_class(str(task))(), rl=RLConfig() if d.get("rl") is not None else None)
    _apply(cfg, d, "")
    _revalidate(cfg)
    return cfg


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _load_yaml(path: Path) -> dict:
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise TrmError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                       f"save the preset as UTF-8") from None
    except OSError as e:
        raise TrmError(f"{path}: cannot read the preset ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise TrmError(f"{path}: invalid YAML{where} ({what})") from None
    if not isinstance(d, dict):
        raise TrmError(f"{path}: a config must be a mapping of keys")
    return d


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_dict(name_or_path: str, _chain: tuple[Path, ...] = ()) -> dict:
    """A preset by name (``sudoku``) or path (``my.yaml`` or a run directory), with its ``base`` chain merged."""
    path = Path(name_or_path)
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise TrmError(f"{path}: a directory without config.yaml; a preset is a name (see `trm presets`), "
                           f"a YAML file or a run directory")
        path = path / "config.yaml"
    if not path.suffix and not path.exists():
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        close = difflib.get_close_matches(str(name_or_path), list_presets(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; presets: {', '.join(list_presets())}"
        raise TrmError(f"unknown preset '{name_or_path}'{hint}")
    if path.resolve() in _chain:  # base: pointing back along its own chain would recurse forever
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise TrmError(f"{path}: its base chain comes back to itself ({cycle})")
    d = _load_yaml(path)
    if "task" not in d and not d.get("base"):  # else it would silently train the default task
        raise TrmError(f"{path}: names neither a task (task: {' | '.join(_task_names())}) nor a base preset "
                       f"(base: sudoku)")
    if d.get("base"):
        if not isinstance(d["base"], str):
            raise TrmError(f"{path}: base must be one preset name or path, got {d['base']!r}")
        base = preset_dict(d["base"], (*_chain, path.resolve()))
        base = {k: v for k, v in base.items() if k != "name"}  # a preset is named after itself
        d = _merge(base, {k: v for k, v in d.items() if k != "base"})
    d.setdefault("name", path.stem if path.name != "config.yaml" else path.parent.name)
    return d


def _alias(key: str) -> list[str] | None:
    """The paths an alias stands for, also written with its section (``model.L_cycles``); None if not an alias."""
    section, _, name = key.rpartition(".")
    target = ALIASES.get(name)
    if target is None:
        return None
    paths = list(target) if isinstance(target, tuple) else [target]
    if section and not all(p.startswith(section + ".") for p in paths):
        return None
    return paths


def _resolve_key(key: str, d: dict) -> list[str]:
    """Map an override key to full dotted paths: aliases and unique section-less names."""
    if paths := _alias(key):
        return paths
    if "." in key or key in ("task", "name", "description"):
        return [key]
    owners = []
    for section, cls in (("model", ModelConfig), ("train", TrainConfig)):
        if key in {f.name for f in fields(cls)}:
            owners.append(f"{section}.{key}")
    data_cls = _data_class(str(d.get("task", "sudoku")))
    if key in {f.name for f in fields(data_cls)}:
        owners.append(f"data.{key}")
    if len(owners) > 1:
        raise TrmError(f"ambiguous key '{key}': write one of {', '.join(owners)}")
    return owners or [key]


def parse_overrides(overrides: list[str], d: dict) -> dict:
    """Apply ``key=value`` strings to a copy of the nested dict ``d`` (values parsed as YAML scalars)."""
    d = copy.deepcopy(d)
    for item in overrides:
        if "=" not in item:
            raise TrmError(f"override '{item}' is not key=value (e.g. model.n_embd=256)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        if key.rpartition(".")[2] == "mlp_t":  # the official code's switch for the MLP-mixer core
            value = "mlp_mixer" if _coerce(value, bool, key) else "attention"
        for path in _resolve_key(key.strip(), d):
            node = d
            *parents, leaf = path.split(".")
            for p in parents:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise TrmError(f"'{path}': '{p}' is not a section")
            node[leaf] = value
    return d


def load_config(preset: str, overrides: list[str] | tuple = ()) -> Config:
    """The one way to get a config: preset (name, YAML path or run dir) + overrides -> validated Config."""
    return from_dict(parse_overrides(list(overrides), preset_dict(preset)))


def save_config(cfg: Config, path: str | Path):
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def replace(cfg: Config, **sections) -> Config:
    """A copy of ``cfg`` with some fields of sections changed: replace(cfg, model={'n_loops': 1})."""
    d = cfg.to_dict()
    for section, values in sections.items():
        d[section] = _merge(d[section], values) if isinstance(values, dict) else values
    return from_dict(d)


__all__ = ["Config", "ModelConfig", "TrainConfig", "RLConfig", "load_config", "from_dict", "save_config", "replace",
           "list_presets", "preset_dict", "parse_overrides", "choice"]
