"""ARC voting breaks a tie of votes by the views' mean halting confidence, sigmoid(q), not the mean raw logit:
one over-confident view must not outweigh two that are fairly sure (the paper's evaluator averages sigmoid(q))."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from trmlab.config import load_config
from trmlab.data.arc import build_arc
from trmlab.tasks import get_task

# evaluation/ holds one task whose two test pairs are voted on; training/ needs a task of its own
TASKS = {"training": {"flip": {"train": [{"input": [[1, 0]], "output": [[0, 1]]}],
                               "test": [{"input": [[2, 0]], "output": [[0, 2]]}]}},
         "evaluation": {"transpose": {"train": [{"input": [[1, 2]], "output": [[1], [2]]}],
                                      "test": [{"input": [[5, 6, 7]], "output": [[5], [6], [7]]},
                                               {"input": [[8], [9]], "output": [[8, 9]]}]}}}


@pytest.fixture(scope="module")
def arc_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("arc-conf")
    for split, tasks in TASKS.items():
        (root / "tasks" / split).mkdir(parents=True)
        for name, task in tasks.items():
            (root / "tasks" / split / f"{name}.json").write_text(json.dumps(task))
    cfg = load_config("arc", ["model.n_embd=16", "model.n_head=2", "model.puzzle_emb_len=2", "data.num_aug=4",
                              f"data.source={root / 'tasks'}"])
    task = get_task("arc")
    return task, task.load(cfg, build_arc(cfg.data, out_root=root / "data")), cfg


def test_a_tie_of_votes_goes_to_the_higher_mean_sigmoid_confidence(arc_data):
    task, data, cfg = arc_data
    test = data.splits["test"]
    rows = data.meta["test_rows"]
    pair0 = [i for i, key in enumerate(rows) if key.split("|")[1] == "0"]
    assert len(pair0) == 4  # four views of test[0]: two vote for the answer, two for a wrong grid (the input)
    right, wrong = pair0[:2], pair0[2:]
    predictions = test.labels.copy()
    predictions[wrong] = test.inputs[wrong]
    q = np.zeros(len(rows))
    q[right] = 1.0          # sigmoid 0.73 each: mean confidence 0.73 (raw mean 1)
    q[wrong] = [20.0, -2.0]  # sigmoid 1.00 and 0.12: mean confidence 0.56 (raw mean 9)
    m = task.extra_metrics(SimpleNamespace(predictions=predictions, q_logits=q), data, cfg, "test")
    assert m["per_task"]["transpose"] == {"pass@1": 1.0, "pass@2": 1.0}   # test[1]: every view right

    q[wrong] = [2.0, 2.0]    # now the wrong grid is the more confident one (0.88): it ranks first
    m = task.extra_metrics(SimpleNamespace(predictions=predictions, q_logits=q), data, cfg, "test")
    assert m["per_task"]["transpose"] == {"pass@1": 0.5, "pass@2": 1.0}
