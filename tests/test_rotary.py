"""RoPE as its definition: the pair (x1, x2) of each position rotated by that position's angles, q and k alike."""

import torch

from trmlab.nn.attention import Rotary


def test_rotary_rotates_each_half_pair_by_the_position_angle_from_the_offset():
    torch.manual_seed(0)
    hd, L, offset = 8, 5, 3
    x = torch.randn(2, L, 3, hd)
    got = Rotary(hd, 4)(x, offset)  # a table shorter than offset + L: rebuilt
    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = torch.outer(torch.arange(offset, offset + L, dtype=torch.float32), inv)[:, None]
    x1, x2 = x.chunk(2, -1)
    want = torch.cat((x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()), -1)
    assert torch.equal(got, want)
