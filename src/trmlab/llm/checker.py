"""Answer checking: did a completion reach the gold answer? The one reward of phase 3 and the accuracy of phase 2.

``check_answer(completion, answer)`` reads the final answer as the last number after the last ``</think>`` (the
GSM8K convention, so "... so the answer is 42." and a bare "42" both count) and compares it numerically with the
gold answer; answers that are not numbers are compared as stripped, case-folded text. A completion without any
answer is simply wrong. A user-supplied checker may raise: ``safe_check`` logs that one line and returns None, and
callers skip the sample (TRL treats a None reward as unscorable: advantage 0) instead of losing the run.
"""

from __future__ import annotations

import re
import sys
from typing import Callable

Checker = Callable[[str, str], bool]
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def final_answer(completion: str) -> str | None:
    """The answer part of a completion: the last number after the thinking block (None if there is none)."""
    tail = completion.rsplit("</think>", 1)[-1]
    numbers = _NUMBER.findall(tail.replace(",", ""))
    if numbers:
        return numbers[-1]
    tail = tail.strip()
    return tail or None


def check_answer(completion: str, answer: str) -> bool:
    got = final_answer(completion)
    if got is None:
        return False
    try:
        return float(got) == float(str(answer).replace(",", "").strip())
    except ValueError:
        return got.strip().casefold() == str(answer).strip().casefold()


def safe_check(checker: Checker, completion: str, answer: str, log: Callable[[str], None] | None = None
               ) -> bool | None:
    """``checker(completion, answer)``; if it raises, log one line and return None (the sample is skipped)."""
    try:
        return bool(checker(completion, answer))
    except Exception as e:  # a buggy checker must not lose the run: report it and skip this sample
        (log or _stderr)(f"answer checker failed on answer {answer!r} ({type(e).__name__}: {e}); sample skipped")
        return None


def _stderr(msg: str):
    print(msg, file=sys.stderr)


def accuracy(flags: list[bool | None]) -> tuple[float, int, int]:
    """(accuracy over the checked samples, number checked, number skipped because the checker raised)."""
    checked = [f for f in flags if f is not None]
    return (sum(checked) / len(checked) if checked else 0.0), len(checked), len(flags) - len(checked)
