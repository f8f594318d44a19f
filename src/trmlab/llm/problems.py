"""Reasoning problems with a worked thinking trace and a checkable answer: the offline task, or a user's dataset.

The offline task (``synthetic``) is chained single-digit arithmetic modulo 10, evaluated left to right::

    question  3+5*2-7          thinking  3+5=8        answer  9
                                          8*2=6
                                          6-7=9

Why not ``data/hidden_states.generate_cot_corpus`` (phase 1's word problems)? Its multi-digit answers need an LLM
far larger than one that trains on two CPU cores in minutes, and the accuracy table is only meaningful when the
offline LLM really solves the task with its thinking and mostly fails without it. Here each thinking step is a
lookup in a 10x10 table (easy to learn), while the answer without thinking needs 2-4 non-commuting steps in one
forward pass (hard for a 4-layer model), so "full thinking" beats "no thinking" by a wide margin.

Other sources: a local ``.jsonl``/``.json``/``.parquet`` file or a Hugging Face dataset name (needs the network),
with the three field names configurable; a source without them fails with one line naming what is missing.
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

from trmlab.errors import TrmError

OPS = "+-*"


@dataclass(frozen=True)
class Problem:
    question: str
    thinking: str   # the worked steps, without the <think> tags
    answer: str     # the checkable final answer


def _apply(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op] % 10


def make_problem(rng: random.Random, min_steps: int = 2, max_steps: int = 4) -> Problem:
    """One chained mod-10 problem with ``min_steps``..``max_steps`` operations."""
    n = rng.randint(min_steps, max_steps)
    acc = rng.randint(0, 9)
    question, steps = str(acc), []
    for _ in range(n):
        op, b = rng.choice(OPS), rng.randint(0, 9)
        r = _apply(acc, op, b)
        question += f"{op}{b}"
        steps.append(f"{acc}{op}{b}={r}")
        acc = r
    return Problem(question, "\n".join(steps), str(acc))


def is_heldout(question: str) -> bool:
    """A fixed 10% of all questions (by hash) is reserved for testing: no training split ever contains them."""
    return zlib.crc32(question.encode()) % 10 == 0


def synthetic_problems(n: int, seed: int, split: str, min_steps: int = 2, max_steps: int = 4) -> list[Problem]:
    """``n`` problems, deterministic in (seed, split). ``test`` draws only held-out questions, every other split
    (``train``, the offline LLM's own training stream) only the others, so test questions are never trained on."""
    rng = random.Random(f"trmlab-arith:{seed}:{split}")
    want_heldout = split == "test"
    out = []
    while len(out) < n:
        p = make_problem(rng, min_steps, max_steps)
        if is_heldout(p.question) == want_heldout:
            out.append(p)
    return out


def _text(path: Path) -> str:
    """The file as strict UTF-8; a missing or non-UTF-8 file is a one-line error naming it."""
    from trmlab.data.corpus import decode_utf8
    try:
        return decode_utf8(path.read_bytes(), path)
    except OSError as e:
        raise TrmError(f"problem source {path}: {e.strerror or e}") from None


def _rows(source: str, split: str) -> list[dict]:
    path = Path(source).expanduser()
    if path.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(_text(path).split("\n"), 1):   # \n only, so line numbers match editors
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise TrmError(f"{path}:{lineno}: not JSON lines ({e.msg})") from None
        return rows
    if path.suffix == ".json":
        try:
            rows = json.loads(_text(path))
        except json.JSONDecodeError as e:
            raise TrmError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(rows, list):
            raise TrmError(f"{path}: expected a JSON list of records")
        return rows
    if path.suffix == ".parquet":
        import pandas as pd
        return pd.read_parquet(path).to_dict("records")
    from trmlab.data.hidden_states import hub_reachable
    if path.exists() or not hub_reachable():
        raise TrmError(f"problem source {source}: not a .jsonl/.json/.parquet file, and no network for a hub dataset")
    from datasets import load_dataset
    try:
        return list(load_dataset(source, split=split))
    except Exception as e:  # a missing or gated dataset: one line
        raise TrmError(f"cannot load dataset {source} (split {split}): {str(e).splitlines()[0]}") from None


def load_problems(source: str, split: str, n: int, fields: tuple[str, str, str] = ("question", "thinking", "answer"),
                  seed: int = 0) -> list[Problem]:
    """Up to ``n`` problems (0 = all) from ``source``; ``fields`` names the question, thinking and answer columns."""
    rows = _rows(source, split)
    if not rows:
        raise TrmError(f"problem source {source} is empty")
    missing = [f for f in fields if f not in rows[0]]
    if missing:
        raise TrmError(f"problem source {source} lacks the field(s) {', '.join(missing)} (has: "
                       f"{', '.join(map(str, rows[0]))}); set data.question_field / thinking_field / answer_field")
    q, t, a = fields
    problems = [Problem(str(r[q]), str(r[t]).strip(), str(r[a]).strip()) for r in rows if r.get(q) is not None]
    random.Random(seed).shuffle(problems)
    return problems[:n] if n else problems
