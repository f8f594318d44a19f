"""Test-time compute: chains, noise, selection, augmentation voting and the compute count (eval/test_time.py)."""

import numpy as np
import pytest
import torch

from trmlab.api import build_model, config
from trmlab.data.maze import dihedral, generate_maze
from trmlab.data.puzzles import PuzzleSplit
from trmlab.data.sudoku import generate_puzzle, is_consistent, is_valid_solution
from trmlab.errors import TrmError
from trmlab.eval.halting import HaltRule, fixed_rule
from trmlab.eval.puzzle import evaluate_puzzles
from trmlab.eval.test_time import InferenceOptions, evaluate_test_time, run_chains, select
from trmlab.eval.views import maze_views, sudoku_views, voting_views


def tiny(task="sudoku", *overrides):
    torch.manual_seed(0)
    extra = ["data.size=7", "data.min_path_len=4"] if task == "maze" else []
    cfg = config(task, "model.n_embd=32", "model.n_head=2", "model.n_layer=1", "model.n_sup_inference=4",
                 *extra, *overrides)
    return build_model(cfg).eval(), cfg


def random_split(n=12, seq_len=81, low=1, high=11, seed=1):
    g = np.random.default_rng(seed)
    return PuzzleSplit(inputs=g.integers(low, high, (n, seq_len)).astype(np.uint8),
                       labels=g.integers(low + 1, high, (n, seq_len)).astype(np.uint8),
                       puzzle_ids=np.zeros(n, np.int32), group_ids=np.arange(n, dtype=np.int32))


def maze_split(n, size=7):
    rng = np.random.default_rng(0)
    mazes = [generate_maze(size, rng, 4) for _ in range(n)]
    return PuzzleSplit(inputs=np.stack([m[0].reshape(-1) for m in mazes]).astype(np.uint8),
                       labels=np.stack([m[1].reshape(-1) for m in mazes]).astype(np.uint8),
                       puzzle_ids=np.zeros(n, np.int32), group_ids=np.arange(n, dtype=np.int32))


def batch_of(split):
    return {"inputs": torch.from_numpy(split.inputs.astype(np.int64)),
            "puzzle_ids": torch.from_numpy(split.puzzle_ids.astype(np.int64))}


def plain_predictions(model, batch, n_sup):
    """Today's evaluation, written out: every step from the initial state, the last step's argmax."""
    carry = None
    for _ in range(n_sup):
        out = model.step(batch, carry)
        carry = out.carry
    return out.logits.argmax(-1)


def spread_halting(model, batch):
    """Shift the Q-head so that about half the puzzles say halt at step 1 and the others later or never."""
    with torch.no_grad():
        model.q_head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))
        model.q_head.bias.zero_()
        model.q_head.bias.fill_(-model.step(batch).q_logit.median().item())


# --------------------------------------------------------------------------------------------- K=1, noise 0
@pytest.mark.parametrize("noise", [0.0, 0.7])
def test_one_chain_reproduces_the_plain_evaluation_exactly(noise):
    model, cfg = tiny()
    split = random_split()
    reference = plain_predictions(model, batch_of(split), 4)
    chains = run_chains(model, batch_of(split), 4, fixed_rule("all"), samples=1, noise=noise)
    assert torch.equal(chains.answers, reference)  # chain 0 is noise-free, so noise changes nothing at K=1
    # the halted answers too: the same rule gives the same answers and steps as the plain evaluation's tracker
    spread_halting(model, batch_of(split))
    rule = fixed_rule("q")
    result = evaluate_puzzles(model, split, cfg, "cpu", halt_rule=rule)
    chains = run_chains(model, batch_of(split), 4, rule, samples=1, noise=noise)
    assert np.array_equal(chains.answers.numpy(), result.halted_predictions)
    assert 1 < len(set(chains.steps.tolist()))  # puzzles really halted at different steps
    assert chains.steps.float().mean().item() == pytest.approx(result.mean_steps_halted)


def test_test_time_eval_with_one_chain_and_one_view_scores_like_the_plain_eval():
    model, cfg = tiny()
    split = random_split()
    split.labels[:4] = plain_predictions(model, batch_of(split), 4)[:4].numpy()  # 4 puzzles the model "solves"
    plain = evaluate_puzzles(model, split, cfg, "cpu").metrics()
    got = evaluate_test_time(model, "sudoku", split, 4, fixed_rule("all"), InferenceOptions(noise=0.5))
    assert got["exact_acc"] == pytest.approx(plain["exact_acc"]) == pytest.approx(4 / 12)
    assert got["core_calls_per_puzzle"] == plain["core_calls_per_puzzle"]


def test_noise_moves_only_the_noisy_chains():
    model, _ = tiny()
    split = random_split(n=3)
    clean = plain_predictions(model, batch_of(split), 4)
    rows = torch.arange(3 * 4)
    chains = run_chains(model, batch_of(split), 4, fixed_rule("all"), samples=4, noise=2.0)
    assert torch.equal(chains.answers[rows % 4 == 0], clean)  # chain 0 of every puzzle
    assert not torch.equal(chains.answers[rows % 4 != 0], clean.repeat_interleave(3, 0))
    quiet = run_chains(model, batch_of(split), 4, fixed_rule("all"), samples=4, noise=0.0)
    assert torch.equal(quiet.answers, clean.repeat_interleave(4, 0))  # noise 0: every chain is chain 0


# --------------------------------------------------------------------------------------------- selection
def candidates():
    """One puzzle, 5 candidates: A three times (low confidence), B once (most confident), C once (halted first)."""
    A, B, C = torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.long), torch.full((6,), 2)
    answers = torch.stack([B, A, C, A, A])[None]
    confidence = torch.tensor([[0.95, 0.4, 0.6, 0.5, 0.3]])
    steps = torch.tensor([[4, 3, 1, 4, 2]])
    return answers, confidence, steps


def test_selection_rules_pick_what_they_promise():
    answers, confidence, steps = candidates()
    assert select(answers, confidence, steps, "q").item() == 0            # B: the most confident
    assert select(answers, confidence, steps, "vote").item() in (1, 3, 4)  # A: three votes of five
    assert select(answers, confidence, steps, "first-halt").item() == 2   # C: halted at step 1
    valid = torch.tensor([[False, False, False, True, True]])
    assert select(answers, confidence, steps, "valid", valid).item() == 3  # the first that checks
    assert select(answers, confidence, steps, "valid", torch.zeros_like(valid)).item() == 0  # none: q's choice


def test_vote_ties_go_to_the_more_confident_answer_and_first_halt_ties_too():
    A, B = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    answers = torch.stack([A, B, A, B])[None]
    confidence = torch.tensor([[0.2, 0.9, 0.3, 0.6]])  # two votes each; B's mean 0.75 beats A's 0.25
    steps = torch.tensor([[2, 3, 2, 1]])
    assert torch.equal(answers[0, select(answers, confidence, steps, "vote").item()], B)
    steps = torch.tensor([[2, 2, 2, 2]])  # everyone halted together: the most confident
    assert select(answers, confidence, steps, "first-halt").item() == 1


# --------------------------------------------------------------------------------------------- views
def test_every_sudoku_view_is_inverted_exactly_and_keeps_a_solution_a_solution():
    rng = np.random.default_rng(0)
    views = sudoku_views(50, rng)
    grids = rng.integers(0, 11, (50, 81))
    assert np.array_equal(views.invert(views.apply(grids)), grids)
    assert len({v.tobytes() for v in views.apply(np.tile(np.arange(81) % 11, (50, 1)))}) == 50  # 50 distinct
    puzzle, solution, _ = generate_puzzle(np.random.default_rng(1), 40)
    p = views.apply(np.tile(puzzle + 1, (50, 1))) - 1
    s = views.apply(np.tile(solution + 1, (50, 1))) - 1
    assert all(is_valid_solution(si) and is_consistent(pi, si) for pi, si in zip(p, s))
    assert (p == 0).sum(1).tolist() == [40] * 50


def test_maze_views_are_the_eight_symmetries_and_invert_exactly():
    grid = np.random.default_rng(0).integers(1, 6, (7, 7))
    views = maze_views(range(8), 49)
    seen = views.apply(np.tile(grid.reshape(49), (8, 1)))
    for k in range(8):
        assert np.array_equal(seen[k], dihedral(grid, k).reshape(49))
    assert np.array_equal(views.invert(seen), np.tile(grid.reshape(49), (8, 1)))
    with pytest.raises(TrmError, match="8 symmetries"):
        voting_views("maze", 1, 9, 49, 6, np.random.default_rng(0))


def test_voting_views_start_with_the_identity_and_arc_has_none():
    views = voting_views("sudoku", 3, 4, 81, 11, np.random.default_rng(0))
    assert np.array_equal(views.positions[::4], np.tile(np.arange(81), (3, 1)))
    assert not np.array_equal(views.positions[1], np.arange(81))
    with pytest.raises(TrmError, match="augmentation voting"):
        voting_views("arc", 3, 2, 900, 12, np.random.default_rng(0))


def test_a_solved_puzzle_stays_solved_through_views_and_voting():
    """A model that answers each view's own solution: every view's answer, inverted, is the original solution."""
    rng = np.random.default_rng(2)
    puzzle, solution, _ = generate_puzzle(rng, 40)
    views = voting_views("sudoku", 1, 6, 81, 11, rng)
    answered = views.apply(np.tile(solution + 1, (6, 1)))  # what a perfect model predicts in each view
    assert np.array_equal(views.invert(answered), np.tile(solution + 1, (6, 1)))


# --------------------------------------------------------------------------------------------- compute
class CountingCore(torch.nn.Module):
    def __init__(self, core):
        super().__init__()
        self.core, self.rows = core, 0

    def forward(self, h, injection):
        self.rows += h.shape[0]
        return self.core(h, injection)


@pytest.mark.parametrize("task, rule", [("sudoku", "all"), ("sudoku", "q"), ("maze", "q")])
def test_the_compute_count_is_the_number_of_core_applications(task, rule):
    model, cfg = tiny(task, "model.n_loops=2", "model.T_recursion=2")
    split = maze_split(10) if task == "maze" else random_split(n=10)
    spread_halting(model, batch_of(split))  # some puzzles halt early, others never: halted rows leave the batch
    model.core = CountingCore(model.core)
    opts = InferenceOptions(samples=3, noise=0.3, views=2, select="vote")
    got = evaluate_test_time(model, task, split, 4, fixed_rule(rule), opts, max_rows=24)
    assert got["core_calls_per_puzzle"] * 10 == model.core.rows
    if rule == "all":
        assert model.core.rows == 10 * 2 * 3 * 4 * 2 * 3  # puzzles x views x chains x steps x T x (n + 1)
    else:
        assert model.core.rows < 10 * 2 * 3 * 4 * 2 * 3  # halting saved real work
        assert got["core_calls_per_puzzle"] == pytest.approx(got["mean_steps"] * 2 * 3 * 6)


def test_bad_options_are_one_line_errors():
    for kw, message in (({"samples": 0}, "--samples 0"), ({"noise": -1.0}, "--noise -1.0"),
                        ({"select": "best"}, "--select best"), ({"views": 0}, "--views 0")):
        with pytest.raises(TrmError, match=message):
            InferenceOptions(**kw)


def test_stable_rule_sees_the_previous_answer_while_rows_leave_the_batch():
    """With rows leaving the batch, 'answer unchanged' must still compare with the previous step's answer."""
    model, _ = tiny()
    split = random_split(n=8)
    with torch.no_grad():
        model.q_head.bias.fill_(10.0)  # q always says halt: stable halts once two steps agree
    chains = run_chains(model, batch_of(split), 4, HaltRule("stable", 0.5, True))
    carry, preds = None, []
    for _ in range(4):
        out = model.step(batch_of(split), carry)
        carry = out.carry
        preds.append(out.logits.argmax(-1))
    for i in range(8):
        same = [k for k in range(1, 4) if torch.equal(preds[k][i], preds[k - 1][i])]
        assert chains.steps[i].item() == (same[0] + 1 if same else 4)


def test_solve_one_is_the_plain_answer_with_one_chain_and_counts_its_candidates():
    from trmlab.eval.test_time import solve_one
    model, _ = tiny()
    split = random_split(n=1)
    got = solve_one(model, "sudoku", split.inputs[0], 4, fixed_rule("all"))
    assert np.array_equal(got["answer"], plain_predictions(model, batch_of(split), 4)[0].numpy())
    assert got["core_calls"] == 4 * model.T_recursion * (model.n_loops + 1) and got["candidates"] == 1
    many = solve_one(model, "sudoku", split.inputs[0], 4, fixed_rule("all"), InferenceOptions(samples=3, views=2))
    assert many["candidates"] == 6 and many["core_calls"] == 6 * got["core_calls"]
