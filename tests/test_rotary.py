"""RoPE as its definition: each pair of a head's dims rotated by its position's angle, q and k alike; and attention
that rotates in pairwise order computes exactly what the halves convention of its weights defines."""

import torch
import torch.nn.functional as F

from trmlab.nn.attention import Attention, KVCache, Rotary
from trmlab.nn.block import _RMSNorm, rms_norm


def angles(hd, positions):
    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    return torch.outer(positions.float(), inv)[:, None]  # [L, 1, hd/2]


def test_rotary_rotates_each_adjacent_pair_by_the_position_angle_from_the_offset():
    torch.manual_seed(0)
    hd, L, offset = 8, 5, 3
    x = torch.randn(2, L, 3, hd)
    got = Rotary(hd, 4)(x, offset)  # a table shorter than offset + L: rebuilt
    ang = angles(hd, torch.arange(offset, offset + L))
    a, b = x[..., 0::2], x[..., 1::2]
    want = torch.stack((a * ang.cos() - b * ang.sin(), b * ang.cos() + a * ang.sin()), -1).flatten(-2)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def pairwise_order(n_heads: int, head_dim: int) -> torch.Tensor:
    """Row order that turns each head's halves (x1 | x2) into adjacent pairs (x1[0], x2[0], x1[1], x2[1], ...)."""
    half = head_dim // 2
    within = torch.stack((torch.arange(half), torch.arange(half) + half), -1).flatten()
    return (torch.arange(n_heads)[:, None] * head_dim + within).flatten()


def test_pairwise_order_interleaves_the_halves_of_each_head():
    assert pairwise_order(2, 4).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def halves_attention(att: Attention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """The definition the weights follow: RoPE on (first half, second half) of each head, no reordering."""
    B, L, _ = x.shape
    nq, nkv, hd = att.n_head, att.n_kv_head, att.head_dim
    q, k, v = att.qkv(x).split([nq * hd, nkv * hd, nkv * hd], -1)
    ang = angles(hd, torch.arange(L))

    def rope(t):
        t1, t2 = t.chunk(2, -1)
        return torch.cat((t1 * ang.cos() - t2 * ang.sin(), t2 * ang.cos() + t1 * ang.sin()), -1)

    q, k = rope(q.view(B, L, nq, hd)), rope(k.view(B, L, nkv, hd))
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.view(B, L, nkv, hd).transpose(1, 2)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=nq != nkv)
    return att.out(y.transpose(1, 2).reshape(B, L, -1))


def test_attention_with_pairwise_rows_equals_the_halves_definition_with_grads_and_a_cache():
    torch.manual_seed(0)
    att = Attention(32, 4, n_kv_head=2, causal=True, rotary=Rotary(8, 16))
    x = torch.randn(2, 6, 32, requires_grad=True)
    got, want = att(x), halves_attention(att, x, causal=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(got)
    torch.testing.assert_close(torch.autograd.grad(got, (x, att.qkv.weight), g),
                               torch.autograd.grad(want, (x, att.qkv.weight), g), rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # decoding token by token through the cache gives the full pass's last rows
        cache = KVCache()
        steps = [att(x[:, :4], cache)] + [att(x[:, i:i + 1], cache) for i in (4, 5)]
        torch.testing.assert_close(torch.cat(steps, 1), want, rtol=1e-5, atol=1e-5)


def test_rms_norm_backward_is_the_gradient_of_its_forward():
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _RMSNorm.apply(t, 1e-5), (x,))
    y = torch.randn(4, 7, 32, requires_grad=True)
    torch.testing.assert_close(rms_norm(y), F.rms_norm(y, (32,), eps=1e-5))
    with torch.no_grad():  # no graph: the same two-pass forward
        torch.testing.assert_close(rms_norm(y), F.rms_norm(y, (32,), eps=1e-5))


def test_compiled_rotation_takes_the_real_form_and_equals_the_complex_one():
    torch.manual_seed(0)
    rot, x = Rotary(8, 16), torch.randn(2, 5, 3, 8)
    torch.testing.assert_close(torch.compile(rot)(x, 2), rot(x, 2), rtol=1e-6, atol=1e-6)


def test_the_projection_reads_its_rows_in_pairwise_order():
    att = Attention(32, 4, n_kv_head=2, rotary=Rotary(8, 16))
    n_qk = 6 * 8
    assert torch.equal(att._weight()[:n_qk], att.qkv.weight[pairwise_order(6, 8)])
    assert torch.equal(att._weight()[n_qk:], att.qkv.weight[n_qk:])
