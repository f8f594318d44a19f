"""Recursive-LM decoding: the exact and the shared KV cache, their sizes, and teacher-forced scoring through them."""

import pytest
import torch

from trmlab.api import build_model
from trmlab.config import load_config
from trmlab.errors import TrmError
from trmlab.eval.generate import generate_ids, new_cache, teacher_forced_loss
from trmlab.nn.attention import KVCache

SMALL = ["model.vocab_size=64", "model.seq_len=24", "model.n_embd=32", "model.n_head=4", "model.n_kv_head=2",
         "model.n_layer=2"]
GPT = ["model.arch=gpt", "model.n_loops=1", "model.T_recursion=1", "model.n_sup_train=1", "model.n_sup_inference=1"]


def model_with(n_loops: int = 2, T: int = 2, n_sup: int = 2, *extra):
    torch.manual_seed(0)
    cfg = load_config("lm-tiny", SMALL + [f"model.n_loops={n_loops}", f"model.T_recursion={T}",
                                          f"model.n_sup_train={n_sup}", f"model.n_sup_inference={n_sup}", *extra])
    return build_model(cfg).eval()


def decode_logits(model, ids: list[int], cache: KVCache | None) -> list[torch.Tensor]:
    """Last-position logits after each token of ``ids`` (from the 3rd on), decoded through ``cache``."""
    out = [model.decode(torch.tensor([ids[:3]]), cache)[0]]
    for i in range(3, len(ids)):
        context = ids[i:i + 1] if cache is not None else ids[:i + 1]
        out.append(model.decode(torch.tensor([context]), cache)[0])
    return out


IDS = [0, 5, 17, 3, 9, 41, 2, 2, 60, 7, 33, 12]


@pytest.mark.parametrize("n_loops", [1, 3])
def test_shared_cache_equals_the_exact_one_with_one_step_and_one_recursion(n_loops):
    # n_sup = T = 1: every core call of a pass is applied once per token, so "the latest application's keys" are
    # the only ones; this holds for any n_loops, because the shared cache keeps one recursion's n_loops + 1 calls
    model = model_with(n_loops, T=1, n_sup=1)
    exact, shared = decode_logits(model, IDS, KVCache()), decode_logits(model, IDS, KVCache(shared=True))
    full = decode_logits(model, IDS, None)
    for a, b, c in zip(exact, shared, full):
        assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-4)


@pytest.mark.parametrize("T,n_sup", [(2, 1), (1, 2), (2, 3)])
def test_shared_cache_approximates_once_a_call_repeats_and_is_that_much_smaller(T, n_sup):
    model = model_with(2, T, n_sup)
    exact, shared = KVCache(), KVCache(shared=True)
    a, b = decode_logits(model, IDS, exact), decode_logits(model, IDS, shared)
    assert torch.allclose(a[0], b[0], atol=1e-5)                    # the prompt is read exactly in one pass
    assert not torch.allclose(a[-1], b[-1], atol=1e-3)              # later tokens see the latest keys only
    assert exact.nbytes() == T * n_sup * shared.nbytes() > 0
    assert len(exact.layers) == T * n_sup * len(shared.layers)


def test_cache_sizes_against_the_same_size_gpt():
    torch.manual_seed(0)
    gpt = build_model(load_config("lm-tiny", SMALL + GPT)).eval()
    n_loops, T, n_sup = 2, 2, 3
    model = model_with(n_loops, T, n_sup)
    sizes = {}
    for name, m, kind in (("gpt", gpt, "exact"), ("exact", model, "exact"), ("shared", model, "shared")):
        sizes[name] = generate_ids(m, [0, 1, 2], 9, temperature=0, cache=kind).cache_bytes
    # 12 positions (3 prompt + 9 new; the last token is sampled, not fed back): n_layer x k and v x kv heads x dim
    assert sizes["gpt"] == 11 * 2 * 2 * 2 * 8 * 4
    assert sizes["shared"] == (n_loops + 1) * sizes["gpt"]
    assert sizes["exact"] == n_sup * T * (n_loops + 1) * sizes["gpt"]


def test_cached_generation_with_either_cache_equals_recomputation_when_exact():
    model = model_with(1, 1, 1)
    full = generate_ids(model, [0, 5, 17], 15, temperature=0, use_cache=False).tokens
    assert generate_ids(model, [0, 5, 17], 15, temperature=0, cache="exact").tokens == full
    assert generate_ids(model, [0, 5, 17], 15, temperature=0, cache="shared").tokens == full
    model = model_with(2, 2, 2)
    full = generate_ids(model, [0, 5, 17], 15, temperature=0, use_cache=False).tokens
    assert generate_ids(model, [0, 5, 17], 15, temperature=0, cache="exact").tokens == full


def test_kv_cache_grows_past_its_capacity_keeping_what_it_held():
    cache, keys = KVCache(capacity=2), []
    for t in range(7):                                     # buffers reallocate at 3 and 5 positions
        k = torch.full((1, 2, 1, 4), float(t))
        keys.append(k)
        got, _ = cache.append(0, k, -k)
        assert torch.equal(got, torch.cat(keys, dim=-2))
    assert cache.length(0) == 7 and cache.nbytes() == 2 * 7 * 2 * 4 * 4


def test_shared_kv_cache_keeps_the_latest_write_until_commit():
    cache = KVCache(shared=True)
    cache.append(0, torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))
    cache.commit()
    for value in (1.0, 2.0):                              # two applications to the same new token
        k, _ = cache.append(0, torch.full((1, 1, 1, 4), value), torch.zeros(1, 1, 1, 4))
        assert k.shape[-2] == 3 and cache.length(0) == 2
    cache.commit()
    k, _ = cache.append(0, torch.full((1, 1, 1, 4), 9.0), torch.zeros(1, 1, 1, 4))
    assert k[0, 0, :, 0].tolist() == [0.0, 0.0, 2.0, 9.0]   # the latest of the two stayed


def test_teacher_forced_loss_through_the_caches():
    model = model_with(2, 2, 2)
    x = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(1))
    y = torch.roll(x, -1, dims=1)
    none, exact = teacher_forced_loss(model, x, y, None), teacher_forced_loss(model, x, y, "exact")
    shared = teacher_forced_loss(model, x, y, "shared")
    assert exact == pytest.approx(none, rel=1e-5)
    assert abs(shared - exact) > 1e-3 * exact
    # with a prompt of the whole window but one token, only the last token goes through the shared cache
    long_prompt = teacher_forced_loss(model, x, y, "shared", prefill=15)
    assert abs(long_prompt - exact) < abs(shared - exact)
    one = model_with(2, 1, 1)
    assert teacher_forced_loss(one, x, y, "shared") == pytest.approx(teacher_forced_loss(one, x, y, None), rel=1e-5)


def test_bad_cache_kinds_are_one_line_errors():
    model = model_with(1, 1, 1)
    with pytest.raises(TrmError, match="--cache must be one of exact, shared"):
        generate_ids(model, [0, 1], 3, cache="lazy")
    torch.manual_seed(0)
    gpt = build_model(load_config("lm-tiny", SMALL + GPT)).eval()
    with pytest.raises(TrmError, match="plain GPT"):
        new_cache(gpt, "shared")
