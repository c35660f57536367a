"""torchrun with 2 CPU processes (gloo, loopback) reaches the parameters of a 1-process run with the
same global batch (4 steps, the last minibatch split unevenly between the ranks)."""
import json
import subprocess

import pytest
import torch

from fastgen.train.checkpoint import load_checkpoint

from conftest import PYTHON, subprocess_env

pytest.importorskip("sklearn")
ARGS = ["toy_models:ToyAR", "--limit", "50", "--batch-size", "16", "--epochs", "1", "--lr", "0.05", "--no-progress"]


def test_two_processes_match_one(tmp_path, run_cli, toy_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli("train", *ARGS, "--out", one)[0] == 0
    env = subprocess_env()
    env.update(MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME=env.get("GLOO_SOCKET_IFNAME", "lo"))
    proc = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "fastgen", "train", *ARGS, "--out", str(two)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["step"] == 4  # rank 0 alone prints
    a, b = load_checkpoint(one), load_checkpoint(two)
    assert a["state"]["step"] == b["state"]["step"] == 4 and b["state"]["world"] == 2
    for k, v in a["model_state"].items():
        torch.testing.assert_close(b["model_state"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    # the runs did train (else equality would be trivial): weights far from their initial values
    from toy_models import ToyAR

    torch.manual_seed(0)  # the loop seeds the initial weights with --seed (default 0)
    initial = ToyAR((1, 8, 8)).state_dict()["weight"]
    assert (initial - a["model_state"]["weight"]).abs().max() > 1e-2
