"""Data-parallel gradients are the mean over ranks, not their sum. Adam-type optimizers are nearly blind to a
gradient's scale, so training runs alone do not show a sum (with train.grad_clip=0 nothing else does either):
two gloo processes hand sync_grads known gradients and check what comes back."""

import os
import socket

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from trmlab.train import distributed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_worker(rank, world, port, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    d = distributed.setup("cpu")
    model = torch.nn.Linear(3, 2)
    model.weight.grad = torch.full((2, 3), float(rank + 1))          # rank 0: 1, rank 1: 2
    model.bias.grad = torch.tensor([4.0, -2.0]) * (1 - 2 * rank)     # rank 0: (4, -2), rank 1: (-4, 2)
    distributed.sync_grads(model, d)
    save_file({"weight": model.weight.grad, "bias": model.bias.grad}, os.path.join(out_dir, f"rank{rank}.safetensors"))
    torch.distributed.destroy_process_group()


def test_sync_grads_averages_the_gradients_of_two_processes(tmp_path):
    mp.spawn(_sync_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        g = load_file(tmp_path / f"rank{rank}.safetensors")
        torch.testing.assert_close(g["weight"], torch.full((2, 3), 1.5))   # (1 + 2) / 2 on every rank
        torch.testing.assert_close(g["bias"], torch.zeros(2))


def test_one_process_leaves_gradients_alone():
    model = torch.nn.Linear(3, 2)
    model.weight.grad = torch.ones(2, 3)
    distributed.sync_grads(model, distributed.Dist())
    assert torch.equal(model.weight.grad, torch.ones(2, 3))
