"""Data parallelism under torchrun, with 2 CPU processes on the gloo backend."""
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, copy_of, run

HERE = Path(__file__).resolve().parents[1]  # tests/, where ddp_worker.py lives


def worker(out: Path, processes: int) -> dict:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] \
        if processes > 1 else [sys.executable]
    env = {"PYTHONPATH": f"{HERE}{os.pathsep}{REPO}"}
    run([*launch, str(HERE / "ddp_worker.py"), str(out)], HERE, env)
    return torch.load(out, weights_only=True)


def test_two_processes_take_the_same_first_step_as_one(tmp_path):
    single, double = worker(tmp_path / "one.pt", 1), worker(tmp_path / "two.pt", 2)
    assert (single["world"], double["world"]) == (1, 2)
    # open_clip's ClipLoss with local_loss=True, gather_with_grad=True, averaged by DDP: the
    # gradient of the global batch's loss, up to float summation order.
    for name, gradient in single["clip"].items():
        assert gradient.abs().sum() > 0, name
        torch.testing.assert_close(double["clip"][name], gradient, rtol=1e-4, atol=1e-6, msg=name)
    # The few-shot loop weights each process's loss by its share of the batch and sums gradients,
    # so uneven shards and a last batch of one image (the second process gets none of it) train
    # as one process does: 6 SGD steps agree to float summation order.
    assert len(double["losses"]) == len(single["losses"]) == 6 and torch.isfinite(double["losses"]).all()
    torch.testing.assert_close(double["prompts"], single["prompts"], rtol=1e-4, atol=1e-5)


def mlflow_runs(project: Path, stage: str) -> int:
    with sqlite3.connect(project / "mlflow.db") as db:
        return db.execute("SELECT COUNT(*) FROM tags WHERE key = 'rvpt.stage' AND value = ?", (stage,)).fetchone()[0]


@pytest.mark.parametrize("command", [["pretrain", "--clean", "-S", "pretrain.clean.steps=4"],
                                     ["tune", "--attack", "badnet", "--defense", "rvpt"]])
def test_stages_relaunch_under_torchrun_and_only_rank_0_writes(reproduced, tmp_path, command):
    project = copy_of(reproduced, tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["compute"]["processes"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = mlflow_runs(project, command[0])
    result = run(["rvpt", "stage", *command], project)
    assert result.stdout.count(f"rvpt stage {command[0]}: wrote") == 1  # printed by rank 0 alone
    assert mlflow_runs(project, command[0]) == before + 1
    written = project / ("models/clean" if command[0] == "pretrain" else "defended/rvpt/badnet")
    assert not list(written.parent.glob(f".{written.name}.*"))  # no second writer left a temporary behind
    if command[0] == "tune":
        assert json.loads((written / "tune.json").read_text())["trainable_params"] > 0
