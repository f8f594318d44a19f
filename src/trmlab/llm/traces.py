"""Thinking traces an LLM writes itself: stage 1b's text from the very model whose states are compressed.

``--text_source self`` asks the source LLM to think about the project's problems: for each problem, its chat
prompt with the ``<think>`` block opened (``chat.ChatFormat.pre``) and what the model writes next, greedily, up to
``trace_tokens`` tokens. The text extracted is prompt + trace, so the compressor is fitted to the states of the
model's own reasoning, not of text another model wrote. The traces are written once, next to the hidden-state
cache (``traces-<cache>.jsonl``, atomically), and reused by every rerun of the same settings.

Problems: ``synthetic`` (the offline chained arithmetic of ``llm/problems.py``, its training split, with an
instruction that says what the notation means) or any problem source ``trm latent`` takes (a .jsonl / .json /
.parquet file or a dataset name with a ``question`` field).
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from trmlab.atomic import write_text
from trmlab.errors import TrmError
from trmlab.llm.chat import ChatFormat
from trmlab.llm.problems import Problem, load_problems, synthetic_problems

SELF_SOURCE = "self"

# The offline problems are bare expressions ("3+5*2-7"): a pretrained LLM needs told what they mean
SYNTHETIC_INSTRUCTION = ("Evaluate from left to right, keeping only the last digit of every result (modulo 10). "
                         "Show one step per line, then give the final digit: ")


def trace_problems(source: str, n: int, seed: int) -> list[Problem]:
    """The ``n`` problems the traces are written for (training split: held-out questions are never traced)."""
    if source == "synthetic":
        return [Problem(SYNTHETIC_INSTRUCTION + p.question, p.thinking, p.answer)
                for p in synthetic_problems(n, seed, "train")]
    # only the question is asked: the thinking and answer fields a problem file may lack are never read here
    problems = load_problems(source, "train", n, fields=("question", "question", "question"), seed=seed)
    if len(problems) < n:
        raise TrmError(f"problem source {source} has {len(problems)} problems; --num_samples asks for {n}")
    return problems


def read_traces(path: Path, n: int) -> list[str] | None:
    """The texts of a complete traces file for ``n`` problems, else None (absent, or from another setting)."""
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    return [r["text"] for r in rows] if len(rows) == n and all("text" in r for r in rows) else None


def write_traces(source, problems: list[Problem], path: Path, max_new_tokens: int, batch_size: int = 8,
                 progress: bool = True, log=print) -> list[str]:
    """``source`` (an ``HFHiddenStateSource``: a transformers model and its tokenizer) writes a thinking trace for
    every problem; the rows (text, question, trace) go to ``path`` in one atomic write. Returns the texts."""
    from trmlab.llm.inject import generate
    model, tokenizer = getattr(source, "model", None), getattr(source, "tokenizer", None)
    if not hasattr(model, "generate") or tokenizer is None:
        raise TrmError(f"--text_source self needs an LLM that writes text (a transformers model or a GGUF); "
                       f"{getattr(source, 'name', source)} is not one")
    fmt = ChatFormat(tokenizer)
    prompts = [fmt.pre(p) for p in problems]
    side = tokenizer.padding_side   # generation pads on the left; extraction reads right-padded batches
    traces = []
    log(f"traces: {source.name} thinks about {len(problems)} problems, up to {max_new_tokens} tokens each -> {path}")
    try:
        for b in tqdm(range(0, len(prompts), batch_size), desc="traces", unit="batch", disable=not progress):
            traces += generate(model, tokenizer, prompts[b:b + batch_size], max_new_tokens, batch_size=batch_size)
    finally:
        tokenizer.padding_side = side
    rows = [{"text": pre + trace, "question": p.question, "trace": trace}
            for pre, trace, p in zip(prompts, traces, problems)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return [r["text"] for r in rows]
