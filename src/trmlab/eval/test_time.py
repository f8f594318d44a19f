"""Test-time compute for a trained puzzle TRM: noisy parallel chains, chain selection and augmentation voting.

Each puzzle is seen through ``views`` validity-preserving views (``eval/views.py``; view 0 is the puzzle as given),
and each view runs ``samples`` chains side by side in one batch. Chain 0 is the plain recursion; chains 1.. get
Gaussian noise of scale ``noise`` x RMS(z) added to their latent state z before every supervision step. A chain
answers at the step its halting rule stops it (``eval/halting.py``), else at the last step, with confidence
sigmoid(q) of that step. The answers are mapped back through their view and one is selected:

    q           the candidate the halting head is most confident in
    vote        the answer most candidates give (ties: the higher mean confidence, then the earlier candidate)
    first-halt  the candidate that halted earliest (ties: the more confident)
    valid       the first candidate (view 0 chain 0 first) whose answer passes the puzzle's rules, else q's choice;
                a diagnostic, since it uses a rule checker rather than the model: reported separately

Compute is counted, not estimated: core applications = rows stepped x T_recursion x (n_loops + 1), per puzzle.
A chain that halted leaves the batch, so halting saves real work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from trmlab.errors import TrmError
from trmlab.eval.halting import HaltRule
from trmlab.eval.views import Views, voting_views
from trmlab.recursion import Carry, HaltTracker

SELECTIONS = ("q", "vote", "first-halt", "valid")


@dataclass
class InferenceOptions:
    samples: int = 1       # chains per view (K)
    noise: float = 0.0     # noise scale relative to RMS(z), chains 1..K-1
    select: str = "q"
    views: int = 1         # V, Sudoku and Maze
    seed: int = 0          # noise and view draws

    def __post_init__(self):
        if self.samples < 1:
            raise TrmError(f"--samples {self.samples}: must be >= 1 (1 = one chain, the plain recursion)")
        if not (self.noise >= 0 and np.isfinite(self.noise)):
            raise TrmError(f"--noise {self.noise}: must be a finite number >= 0 (a fraction of the state's RMS)")
        if self.select not in SELECTIONS:
            raise TrmError(f"--select {self.select}: choose from {', '.join(SELECTIONS)}")
        if self.views < 1:
            raise TrmError(f"--views {self.views}: must be >= 1 (1 = the puzzle as given)")

    @property
    def is_plain(self) -> bool:
        return self.samples == 1 and self.views == 1


@dataclass
class Chains:
    answers: torch.Tensor     # [R, L] each row's answer (at its halting step, else the last)
    steps: torch.Tensor       # [R] supervision steps it used
    confidence: torch.Tensor  # [R] sigmoid(q) at the step its answer comes from
    core_calls: int           # core applications actually run, all rows together


def core_calls_per_step(model) -> int:
    return model.T_recursion * (model.n_loops + 1)


def add_noise(z: torch.Tensor, scale: float, noisy: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """z + scale x RMS(z) x N(0, 1) on the rows where ``noisy`` [R] is True (RMS per row, over cells and width)."""
    rms = z.float().pow(2).mean(dim=tuple(range(1, z.dim())), keepdim=True).sqrt()
    eps = torch.randn(z.shape, generator=generator, dtype=torch.float32).to(z.device)
    return torch.where(noisy.view(-1, *[1] * (z.dim() - 1)), (z.float() + scale * rms * eps).to(z.dtype), z)


@torch.no_grad()
def run_chains(model, batch: dict, n_sup: int, rule: HaltRule, samples: int = 1, noise: float = 0.0,
               generator: torch.Generator | None = None) -> Chains:
    """``samples`` chains for every row of ``batch`` as one batch (row r * samples + k is chain k of row r).

    Rows whose halting rule has fired leave the batch; the rest go on up to ``n_sup`` steps.
    """
    rows = {k: v.repeat_interleave(samples, 0) for k, v in batch.items() if k in ("inputs", "puzzle_ids")}
    n = rows["inputs"].shape[0]
    device = rows["inputs"].device
    noisy = torch.arange(n, device=device) % samples != 0  # chain 0 of every row stays noise-free
    generator = generator or torch.Generator().manual_seed(0)
    carry = model.initial_carry(model.embed(rows))  # what step(batch, None) starts from, made explicit
    tracker, active = HaltTracker(n_sup, rule), torch.ones(n, dtype=torch.bool, device=device)
    pred = q = None
    calls = 0
    for _ in range(n_sup):
        idx = active.nonzero().squeeze(1)
        everyone = len(idx) == n
        sub = rows if everyone else {k: v[idx] for k, v in rows.items()}
        state = carry if everyone else Carry(carry.y[idx], carry.z[idx])
        if noise > 0:
            state = Carry(state.y, add_noise(state.z, noise, noisy[idx], generator))
        out = model.step(sub, state)
        calls += len(idx) * core_calls_per_step(model)
        step_pred = out.logits.argmax(-1)
        if everyone:
            carry, pred, q = out.carry, step_pred, out.q_logit
        else:  # out of place: the tracker holds on to the previous step's answers
            carry = Carry(carry.y.index_copy(0, idx, out.carry.y), carry.z.index_copy(0, idx, out.carry.z))
            pred, q = pred.index_copy(0, idx, step_pred), q.index_copy(0, idx, out.q_logit)
        tracker.update(pred, q if rule.halts else None)
        if rule.halts:
            active = ~tracker.done
            if not active.any():
                break
    answer_q = tracker.q_logit if rule.halts else q
    return Chains(tracker.answer, tracker.steps, torch.sigmoid(answer_q.float()), calls)


# --------------------------------------------------------------------------------------------- selection
def select(answers: torch.Tensor, confidence: torch.Tensor, steps: torch.Tensor, how: str,
           valid: torch.Tensor | None = None) -> torch.Tensor:
    """Index [P] of the chosen candidate per puzzle from answers [P, C, L], confidence [P, C], steps [P, C]."""
    if how == "q":
        return confidence.argmax(1)  # the first of equals: chain 0 of view 0 wins a tie
    if how == "first-halt":
        # earliest step first, then the most confident (confidence is in [0, 1], steps differ by >= 1)
        return (-2.0 * steps.float() + confidence).argmax(1)
    if how == "valid":
        if valid is None:
            raise TrmError("--select valid: this task has no answer checker")
        first_valid = valid.float().argmax(1)
        return torch.where(valid.any(1), first_valid, confidence.argmax(1))
    if how == "vote":
        return torch.tensor([_vote_one(a, c) for a, c in zip(answers, confidence)], dtype=torch.long)
    raise TrmError(f"--select {how}: choose from {', '.join(SELECTIONS)}")


def _vote_one(answers: torch.Tensor, confidence: torch.Tensor) -> int:
    """The candidate whose answer most candidates share; ties by mean confidence, then the first candidate."""
    same = (answers[:, None, :] == answers[None, :, :]).all(-1).float()  # [C, C]
    votes = same.sum(1)
    mean_conf = (same * confidence[None, :]).sum(1) / votes
    order = np.lexsort((np.arange(len(votes)), -mean_conf.numpy(), -votes.numpy()))  # last key sorts first
    return int(order[0])


# --------------------------------------------------------------------------------------------- evaluation
def answer_checker(task_name: str):
    """(inputs [N, L], answers [N, L]) -> bool [N]: does the answer solve the puzzle by its rules? None if no
    checker (ARC has none: its rules are the task's)."""
    if task_name == "sudoku":
        from trmlab.data.sudoku import decode_tokens, is_consistent, is_valid_solution

        def check(inputs, answers):
            return np.array([is_valid_solution(decode_tokens(a)) and is_consistent(decode_tokens(i), decode_tokens(a))
                             for i, a in zip(inputs, answers)], dtype=bool)
        return check
    if task_name == "maze":
        from trmlab.data.maze import check_path

        def check(inputs, answers):
            return np.array([check_path(i, a)["valid"] for i, a in zip(inputs, answers)], dtype=bool)
        return check
    return None


@torch.no_grad()
def solve_batch(model, task_name: str, inputs: np.ndarray, puzzle_ids: np.ndarray, n_sup: int, rule: HaltRule,
                opts: InferenceOptions, rng: np.random.Generator, generator: torch.Generator, device="cpu") -> dict:
    """Every candidate (view x chain) for a batch of P puzzles, mapped back to the puzzles' own frame.

    Returns answers [P, C, L], confidence [P, C], steps [P, C], core_calls (C = views x samples)."""
    P, L = inputs.shape
    V, K = opts.views, opts.samples
    views = voting_views(task_name, P, V, L, model.cfg.vocab_size, rng)
    seen = views.apply(np.repeat(inputs, V, axis=0))
    batch = {"inputs": torch.from_numpy(seen).to(device),
             "puzzle_ids": torch.from_numpy(np.repeat(puzzle_ids, V).astype(np.int64)).to(device)}
    chains = run_chains(model, batch, n_sup, rule, K, opts.noise, generator)
    per_chain = Views(np.repeat(views.positions, K, axis=0), np.repeat(views.tokens, K, axis=0))
    answers = torch.from_numpy(per_chain.invert(chains.answers.cpu().numpy()))
    return {"answers": answers.view(P, V * K, L), "confidence": chains.confidence.cpu().view(P, V * K),
            "steps": chains.steps.cpu().view(P, V * K), "core_calls": chains.core_calls}


@torch.no_grad()
def solve_one(model, task_name: str, tokens: np.ndarray, n_sup: int, rule: HaltRule | None = None,
              opts: InferenceOptions | None = None) -> dict:
    """`trm solve`: one puzzle's chosen answer [L] (its own frame), steps, confidence and the compute spent.

    Defaults: one plain chain halted by ``stable`` (a run's calibrated rule comes from ``halt_rule_from_args``)."""
    from trmlab.eval.halting import fixed_rule
    rule, opts = rule or fixed_rule("stable"), opts or InferenceOptions()
    rng, generator = np.random.default_rng([opts.seed, 19]), torch.Generator().manual_seed(opts.seed)
    tokens = np.asarray(tokens, np.int64).reshape(1, -1)
    was_training = model.training
    model.eval()
    got = solve_batch(model, task_name, tokens, np.zeros(1, np.int64), n_sup, rule, opts, rng, generator)
    model.train(was_training)
    checker = answer_checker(task_name)
    valid = None
    if opts.select == "valid" and checker:
        valid = torch.from_numpy(checker(np.repeat(tokens, got["answers"].shape[1], 0), got["answers"][0].numpy()))[None]
    i = int(select(got["answers"], got["confidence"], got["steps"], opts.select, valid)[0])
    return {"answer": got["answers"][0, i].numpy(), "steps": int(got["steps"][0, i]),
            "confidence": float(got["confidence"][0, i]), "core_calls": got["core_calls"],
            "candidates": int(got["answers"].shape[1]), "halt": rule.label()}


def solve_summary(got: dict, n_sup: int) -> str:
    """The steps-and-compute part of `trm solve`'s verdict line."""
    many = f", {got['candidates']} candidates" if got["candidates"] > 1 else ""
    return (f"supervision steps used: {got['steps']} of {n_sup}   core applications: {got['core_calls']:,}{many}   "
            f"(halt {got['halt']})")


@torch.no_grad()
def evaluate_test_time(model, task_name: str, split, n_sup: int, rule: HaltRule, opts: InferenceOptions,
                       device="cpu", max_samples: int = 0, max_rows: int = 4096) -> dict:
    """Exact accuracy of every selection rule, and the compute spent, on a held-out split."""
    n = len(split) if not max_samples else min(max_samples, len(split))
    per_batch = max(1, max_rows // (opts.views * opts.samples))
    rng, generator = np.random.default_rng([opts.seed, 19]), torch.Generator().manual_seed(opts.seed)
    checker = answer_checker(task_name)
    hits = {how: 0 for how in SELECTIONS if how != "valid" or checker}
    any_right = calls = 0
    steps_sum = 0.0
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, n, per_batch), desc=f"test-time ({n:,} puzzles)", unit="batch", leave=False,
                      disable=None):
        idx = np.arange(start, min(start + per_batch, n))
        inputs = split.inputs[idx].astype(np.int64)
        labels = torch.from_numpy(split.labels[idx].astype(np.int64))
        got = solve_batch(model, task_name, inputs, split.puzzle_ids[idx], n_sup, rule, opts, rng, generator, device)
        right = ((got["answers"] == labels[:, None]) | (labels[:, None] == 0)).all(-1)  # [P, C]
        valid = None
        if checker:
            C = got["answers"].shape[1]
            flat = checker(np.repeat(inputs, C, axis=0), got["answers"].reshape(-1, inputs.shape[1]).numpy())
            valid = torch.from_numpy(flat).view(len(idx), C)
        for how in hits:
            chosen = select(got["answers"], got["confidence"], got["steps"], how, valid)
            hits[how] += int(right[torch.arange(len(idx)), chosen].sum())
        any_right += int(right.any(1).sum())
        calls += got["core_calls"]
        steps_sum += float(got["steps"].float().mean(1).sum())
    model.train(was_training)
    n = max(n, 1)
    by_select = {how: h / n for how, h in hits.items()}
    metrics = {"exact_acc": by_select.get(opts.select, float("nan")), "select": opts.select,
               "core_calls_per_puzzle": calls / n, "samples": opts.samples, "noise": opts.noise,
               "views": opts.views, "halt": rule.label(), "mean_steps": steps_sum / n,
               "n_sup_inference": n_sup, "eval_samples": int(min(n, len(split)))}
    metrics["exact_acc_by_select"] = {h: v for h, v in by_select.items() if h != "valid"}
    if "valid" in by_select:  # uses the rules, not the model: kept apart from the model's own selections
        metrics["exact_acc_select_valid_diagnostic"] = by_select["valid"]
    metrics["any_candidate_acc"] = any_right / n
    return metrics
