"""How a problem becomes text for a chat model: the prompt, the <think> block and the answer (SmolLM3 style).

For a problem (question q, thinking t, answer a) and the model's own chat template::

    prompt   = template([user: q], add_generation_prompt)
               e.g. "<|im_start|>user\\nq<|im_end|>\\n<|im_start|>assistant\\n"
    pre      = prompt + "<think>\\n"                             the moment thinking starts
    full     = pre + t + "\\n</think>\\n"                         thinking done; the answer comes next
    after_lines(k) = pre + t's first k lines + "\\n</think>\\n"    k worked steps done (step-wise targets)
    nothink  = pre + "\\n</think>\\n"  = prompt + "<think>\\n\\n</think>\\n"   SmolLM3's enable_thinking=False block
    answer   = a + eos

``nothink`` is ``full`` with an empty thinking trace, so "no thinking", "full thinking" and "latent thinking" (the
no-thinking text whose last hidden states are overwritten, see ``inject.py``) differ only in what stands between
the tags. A template that already opens the block in its generation prompt (Qwen3, DeepSeek-R1) is not opened
twice; a tokenizer without a chat template gets a plain ``Question: q\\n`` prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from trmlab.llm.problems import Problem

THINK_OPEN = "<think>\n"
THINK_CLOSE = "\n</think>\n"


@dataclass
class ChatFormat:
    tokenizer: object
    system: str = ""   # an optional system message (SmolLM3 adds its own default one)

    def prompt(self, question: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = ([{"role": "system", "content": self.system}] if self.system else [])
            messages.append({"role": "user", "content": question})
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"Question: {question}\n"

    def pre(self, p: Problem) -> str:
        text = self.prompt(p.question)
        return text if text.rstrip().endswith("<think>") else text + THINK_OPEN

    def full(self, p: Problem) -> str:
        return self.pre(p) + p.thinking.strip() + THINK_CLOSE

    def after_lines(self, p: Problem, k: int) -> str:
        """``full`` with only the first ``k`` lines of the thinking: the state after k worked steps
        (``after_lines(p, len(thinking_lines(p)))`` is ``full(p)``)."""
        return self.pre(p) + "\n".join(thinking_lines(p)[:k]) + THINK_CLOSE

    def nothink(self, p: Problem) -> str:
        return self.pre(p) + THINK_CLOSE

    def answer(self, p: Problem) -> str:
        return p.answer + (self.tokenizer.eos_token or "")


def thinking_lines(p: Problem) -> list[str]:
    """The worked lines of a trace, split so that joining them with newlines gives the trace back."""
    return p.thinking.strip().split("\n")
