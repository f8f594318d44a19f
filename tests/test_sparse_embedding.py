"""The paper's puzzle-identifier table: a buffer updated by sign-SGD on the rows a batch looked up, shared with EMA."""

import copy

import pytest
import torch
from safetensors.torch import load_file

from trmlab.config import load_config
from trmlab.nn.sparse_embedding import SignSGDRows, SparseEmbedding
from trmlab.recursion import count_parameters
from trmlab.train.checkpoint import latest_checkpoint
from trmlab.train.trainer import Trainer


def test_only_looked_up_rows_move_by_the_sign_of_their_summed_gradient():
    table = SparseEmbedding(5, 3)
    table.weight.copy_(torch.arange(15.0).view(5, 3))
    before = table.weight.clone()
    opt = SignSGDRows([table], lr=0.1, weight_decay=0.5)
    ids = torch.tensor([1, 3, 1])
    coef = torch.tensor([[1.0, -2.0, 0.0], [-1.0, 1.0, 0.0], [-3.0, 1.0, 0.0]])
    (table(ids) * coef).sum().backward()
    opt.step()
    # id 1 appears twice: its gradient is the sum [-2, -1, 0]; id 3's is [-1, 1, 0]; a zero gradient only decays
    want = before.clone()
    want[1] = before[1] * (1 - 0.05) - 0.1 * torch.tensor([-1.0, -1.0, 0.0])
    want[3] = before[3] * (1 - 0.05) - 0.1 * torch.tensor([-1.0, 1.0, 0.0])
    torch.testing.assert_close(table.weight, want)
    assert table.lookups == []


def test_lookups_without_grad_are_not_recorded_and_a_deep_copy_shares_the_table():
    table = SparseEmbedding(4, 2)
    with torch.no_grad():
        table(torch.tensor([0, 1]))
    table.eval()
    table(torch.tensor([2]))
    assert table.lookups == []
    twin = copy.deepcopy(torch.nn.Sequential(table))[0]
    assert twin.weight.data_ptr() == table.weight.data_ptr()
    assert not twin.training


def test_skipped_step_drops_its_lookups():
    table = SparseEmbedding(3, 2)
    opt = SignSGDRows([table], lr=1.0, weight_decay=0.0)
    table(torch.tensor([0])).sum().backward()
    opt.zero_grad()  # the trainer does this before every step; a skipped step never called opt.step()
    opt.step()
    assert torch.equal(table.weight, torch.zeros(3, 2))


@pytest.mark.parametrize("sparse", [True, False])
def test_trainer_trains_the_table_with_its_own_optimizer(tmp_path, data_root, tiny_overrides, sparse):
    cfg = load_config("sudoku", tiny_overrides + ["train.steps=2", "model.puzzle_emb_len=2",
                                                  f"model.puzzle_emb_sparse={str(sparse).lower()}"])
    trainer = Trainer(cfg, tmp_path / "r", data_root=data_root, quiet=True)
    in_groups = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
    table = trainer.model.embed.puzzle_emb.weight
    assert id(table) in in_groups
    assert isinstance(trainer.optimizers[-1], SignSGDRows) == sparse
    assert count_parameters(trainer.model)["puzzle_emb_params"] == table.numel()
    trainer.fit()
    assert table.abs().sum() > 0  # zero-initialised, then trained
    ema = load_file(latest_checkpoint(tmp_path / "r") / "ema.safetensors")["embed.puzzle_emb.weight"]
    assert torch.equal(ema, table) == sparse  # the sparse table is shared with the EMA copy, not averaged
