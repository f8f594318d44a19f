"""The recursion engine: gradient path, number of core applications, memory independent of T_recursion."""

import torch

from trmlab.api import build_model, config
from trmlab.recursion import Carry, count_parameters, model_summary, recursion


def tiny_model(*overrides):
    torch.manual_seed(0)
    cfg = config("sudoku", "model.n_embd=32", "model.n_head=2", "model.n_layer=1", *overrides)
    return build_model(cfg), cfg


def sudoku_batch(b=4):
    g = torch.Generator().manual_seed(1)
    return {"inputs": torch.randint(1, 11, (b, 81), generator=g), "puzzle_ids": torch.zeros(b, dtype=torch.long),
            "labels": torch.randint(2, 11, (b, 81), generator=g)}


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def loss_of(model, logits, batch):
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"])


def test_gradient_flows_only_through_last_recursion():
    model, cfg = tiny_model("model.n_loops=2", "model.T_recursion=3")
    batch = sudoku_batch()
    out = model.step(batch)
    loss_of(model, out.logits, batch).backward()
    engine_grads = grads(model)

    # Reference: two recursions with no graph at all, then one recursion from their detached result.
    model.zero_grad()
    x = model.embed(batch)
    c = model.initial_carry(x)
    y, z = c.y, c.z
    with torch.no_grad():
        for _ in range(2):
            y, z = recursion(model.core, x, y, z, 2)
    y, z = recursion(model.core, x, y.detach(), z.detach(), 2)
    loss_of(model, model.head(y), batch).backward()
    reference = grads(model)
    assert engine_grads.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(engine_grads[name], reference[name], rtol=1e-5, atol=1e-7)

    # Full backpropagation through all recursions gives different gradients: the test can tell them apart.
    model.zero_grad()
    x = model.embed(batch)
    y, z = c.y, c.z
    for _ in range(3):
        y, z = recursion(model.core, x, y, z, 2)
    loss_of(model, model.head(y), batch).backward()
    full = grads(model)
    assert any(not torch.allclose(full[n], reference[n]) for n in reference)


def test_carry_leaves_the_step_detached():
    model, _ = tiny_model()
    out = model.step(sudoku_batch())
    assert not out.carry.y.requires_grad and not out.carry.z.requires_grad
    assert out.logits.requires_grad


def test_core_applications_follow_n_loops_T_and_n_sup():
    for n_loops, T, n_sup in [(1, 1, 1), (3, 2, 1), (2, 3, 4), (6, 3, 2)]:
        model, _ = tiny_model(f"model.n_loops={n_loops}", f"model.T_recursion={T}")
        model.core.n_calls = 0
        model.predict(sudoku_batch(2), n_sup=n_sup, halt=False)
        assert model.core.n_calls == n_sup * T * (n_loops + 1)


def saved_activation_bytes(model, batch):
    """Bytes autograd keeps for the backward pass of one supervision step."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model.step(batch)
    loss_of(model, out.logits, batch).backward()
    return total


def test_activation_memory_does_not_grow_with_T_recursion():
    batch = sudoku_batch()
    sizes = []
    for T in (1, 2, 4, 8):
        model, _ = tiny_model("model.n_loops=2", f"model.T_recursion={T}")
        sizes.append(saved_activation_bytes(model, batch))
    assert len(set(sizes)) == 1, sizes
    # ...while it does grow with n_loops, which is backpropagated.
    model, _ = tiny_model("model.n_loops=4", "model.T_recursion=1")
    assert saved_activation_bytes(model, batch) > sizes[0]


def test_reset_carry_restarts_only_selected_samples():
    model, _ = tiny_model()
    batch = sudoku_batch(3)
    out = model.step(batch)
    reset = torch.tensor([True, False, True])
    c = model.reset_carry(out.carry, reset)
    init = model.initial_carry(model.embed(batch))
    assert torch.equal(c.y[0], init.y[0]) and torch.equal(c.z[2], init.z[2])
    assert torch.equal(c.y[1], out.carry.y[1])


def test_predict_halts_per_sample_when_q_is_positive():
    model, _ = tiny_model()
    with torch.no_grad():
        model.q_head.bias.fill_(5.0)  # everyone is confident at once
    _, steps = model.predict(sudoku_batch(2), n_sup=4, halt=True)
    assert steps.tolist() == [1, 1]
    with torch.no_grad():
        model.q_head.bias.fill_(-5.0)
    _, steps = model.predict(sudoku_batch(2), n_sup=4, halt=True)
    assert steps.tolist() == [4, 4]


def test_summary_reports_params_and_effective_depth():
    model, cfg = tiny_model("model.puzzle_emb_len=2", "model.num_puzzle_ids=10", "model.n_loops=3",
                            "model.T_recursion=2", "model.n_sup_train=5")
    counts = count_parameters(model)
    assert counts["puzzle_emb_params"] == 10 * 2 * 32
    assert counts["params"] - counts["params_without_puzzle_emb"] == counts["puzzle_emb_params"]
    text = model_summary(model, cfg)
    assert f"{counts['params']:,}" in text and "effective depth 40" in text
    assert cfg.model.effective_depth == 1 * (3 + 1) * 2 * 5


def test_paper_preset_matches_published_parameter_counts():
    """The paper's Sudoku MLP model is ~5.0M parameters, the attention variant ~6.8M (the README's 7M)."""
    mlp = build_model(config("sudoku-paper"))
    attn = build_model(config("sudoku-paper", "mlp_t=false", "pos_encodings=rope"))
    assert 4.9e6 < count_parameters(mlp)["params_without_puzzle_emb"] < 5.1e6
    assert 6.7e6 < count_parameters(attn)["params_without_puzzle_emb"] < 6.9e6


def test_carry_type():
    model, _ = tiny_model()
    assert isinstance(model.step(sudoku_batch(1)).carry, Carry)


def test_swiglu_hand_written_backward_is_the_gradient_of_its_forward():
    from trmlab.nn.mlp import _SiluGate
    h = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_SiluGate.apply, (h,))
    gate, up = h.detach().chunk(2, -1)
    assert torch.allclose(_SiluGate.apply(h), torch.nn.functional.silu(gate) * up)
