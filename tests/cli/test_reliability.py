"""Issue 11: a checkpoint never runs code; damaged, diverged, concurrent and contradictory runs
are one-line errors (exit 1) or say what they did; small CLI promises (JSON units, .npy paths)."""
import json
import logging
import math
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastgen.train import loop
from fastgen.train.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from fastgen.train.evaluate import NonFiniteError, nll
from fastgen.train.lock import lock_path

from conftest import PYTHON, ROOT, subprocess_env

pytest.importorskip("sklearn")
TOY = "toy_models:ToyAR"
QUICK = ["--limit", "32", "--batch-size", "16", "--no-progress"]
VAE_SMALL = [*QUICK, "--set", "hidden=16", "--set", "latent_dim=2"]


def one_line_error(result, match):
    code, _, err = result
    assert code == 1, err
    lines = err.strip().splitlines()  # progress lines may precede it; the error is one line, the last
    errors = [ln for ln in lines if "error" in ln.lower()]
    assert errors == lines[-1:] and lines[-1].startswith("fastgen: error: ") and "Traceback" not in err, err
    assert re.search(match, lines[-1]), lines[-1]
    return lines[-1]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    from fastgen.cli import main

    out = tmp_path_factory.mktemp("rel") / "vae"
    torch.set_num_threads(1)
    assert main(["train", "vae", "--out", str(out), "--epochs", "1", *VAE_SMALL]) == 0
    return out


# --- 1. a checkpoint cannot name code -------------------------------------------------------
def test_checkpoint_naming_a_callable_is_refused_and_nothing_runs(vae_run, tmp_path, run_cli):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "evil"
    payload = load_checkpoint(vae_run)
    payload["model"] = {"name": "logging:basicConfig", "input_shape": [1, 8, 8],
                        "kwargs": {"filename": str(victim), "filemode": "w"}, "family": "vae"}
    save_checkpoint(run, payload)  # a valid checksum: the attacker can compute it too
    handlers = list(logging.root.handlers)
    for argv in (("sample", run, "-o", tmp_path / "s.png"), ("score", run), ("features", run, "-o", tmp_path / "f"),
                 ("train", "vae", "--out", run, "--resume")):
        line = one_line_error(run_cli(*argv), "not a fastgen model|holds a 'logging:basicConfig' run")
        assert "--model" in line or "holds" in line
    # the user naming it on the command line does not help: only fastgen model subclasses are built
    one_line_error(run_cli("sample", run, "--model", "logging:basicConfig", "-o", tmp_path / "s.png"),
                   "not a subclass of fastgen")
    one_line_error(run_cli("train", "logging:basicConfig", "--out", run, "--resume"), "not a subclass of fastgen")
    one_line_error(run_cli("train", "logging:basicConfig", "--out", tmp_path / "new"), "not a subclass of fastgen")
    assert victim.read_text() == "precious" and logging.root.handlers == handlers


def test_own_class_only_from_the_command_line(tmp_path, run_cli, toy_path):
    one_line_error(run_cli("train", "toy_models:NotAModel", "--out", tmp_path / "n"), "not a subclass of fastgen")
    run = tmp_path / "toy"
    assert run_cli("train", TOY, "--out", run, "--max-steps", "1", *QUICK)[0] == 0
    one_line_error(run_cli("score", run), r"pass --model toy_models:ToyAR")
    one_line_error(run_cli("score", run, "--model", "toy_models:ToyNaN"), "holds a 'toy_models:ToyAR' run")
    code, out, _ = run_cli("score", run, "--model", TOY)
    assert code == 0 and json.loads(out)["nll_nats"] > 0


# --- 2. integrity -----------------------------------------------------------------------------
def test_flipped_bytes_inside_a_tensor_are_refused(vae_run, tmp_path, run_cli):
    raw = bytearray((vae_run / "checkpoint.pt").read_bytes())
    weight = load_checkpoint(vae_run)["model_state"]["encoder.1.weight"]
    at = raw.find(weight.numpy().tobytes()[:256])
    assert at > 0
    for i in range(at + 64, at + 128):  # 64 bytes inside the tensor's data
        raw[i] ^= 0xFF
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(bytes(raw))
    assert torch.load(bad, weights_only=True)["format"] == "fastgen-checkpoint"  # torch reads it happily
    one_line_error(run_cli("score", bad), "corrupt: its contents do not match the checksum")
    one_line_error(run_cli("sample", tmp_path, "-o", tmp_path / "s.png"), "corrupt")


# --- 8. divergence ----------------------------------------------------------------------------
def test_diverged_run_stops_with_an_error(tmp_path, run_cli, toy_path):
    run = tmp_path / "nan"
    one_line_error(run_cli("train", "toy_models:ToyNaN", "--out", run, "--epochs", "2", *QUICK),
                   "training diverged: loss nan is not finite")
    assert not os.path.exists(checkpoint_path(run))
    one_line_error(run_cli("train", TOY, "--out", tmp_path / "inf", "--lr", "inf", *QUICK), "lr must be a finite")
    one_line_error(run_cli("train", TOY, "--out", tmp_path / "neg", "--lr", "-1", *QUICK), "lr must be a finite")


def test_huge_lr_diverges_or_stays_finite(tmp_path, run_cli, toy_path):
    """--lr 1e38: the weights overflow; the run must stop with 'diverged', never save non-finite weights."""
    run = tmp_path / "huge"
    code, _, err = run_cli("train", TOY, "--out", run, "--lr", "1e38", "--epochs", "2", *QUICK)
    assert code == 1 and "diverged" in err, err
    if os.path.exists(checkpoint_path(run)):
        assert all(torch.isfinite(v).all() for v in load_checkpoint(run)["model_state"].values())


def test_scoring_a_nan_model_is_an_error(vae_run, tmp_path, run_cli):
    payload = load_checkpoint(vae_run)
    for state in (payload["model_state"], payload["best"]["model_state"]):
        state["head.proj.weight"] = torch.full_like(state["head.proj.weight"], float("nan"))
    save_checkpoint(tmp_path, payload)
    for argv in (("score", tmp_path), ("sample", tmp_path, "-o", tmp_path / "s.png")):
        one_line_error(run_cli(*argv), "NaN or infinite")
    from toy_models import ToyNaN

    with pytest.raises(NonFiniteError, match="NLL is NaN"):
        nll(ToyNaN(), "ar", torch.zeros(3, 1, 8, 8))


# --- 11, 13. one writer per run folder; history and temp files ----------------------------------
def test_run_folder_lock(tmp_path, run_cli, toy_path):
    run = tmp_path / "locked"
    run.mkdir()
    lock = lock_path(checkpoint_path(run))
    with open(lock, "w") as f:  # a live process (this one) holds the folder
        f.write(f"{os.getppid()} {socket.gethostname()}")
    one_line_error(run_cli("train", TOY, "--out", run, *QUICK), "in use by another training")
    assert not os.path.exists(checkpoint_path(run)) and os.path.exists(lock)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(lock, "w") as f:  # its process is gone: stale, taken over
        f.write(f"{dead.pid} {socket.gethostname()}")
    assert run_cli("train", TOY, "--out", run, "--max-steps", "1", *QUICK)[0] == 0
    assert not os.path.exists(lock)  # released at the end
    one_line_error(run_cli("train", TOY, "--out", run, "--resume", "--lr", "0.5"), "contradicts")
    assert not os.path.exists(lock)  # released after an error too


def test_history_with_every_checkpoint_and_stale_temps(tmp_path, run_cli, monkeypatch, toy_path):
    run = tmp_path / "hist"
    calls = []
    real = loop.validation_loss

    def killed_in_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(loop, "validation_loss", killed_in_epoch_2)
    assert run_cli("train", TOY, "--out", run, "--epochs", "3", *QUICK)[0] == 130
    monkeypatch.undo()
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1] == [load_checkpoint(run)["state"]["epoch"]]
    assert not os.path.exists(lock_path(checkpoint_path(run)))
    (run / ".checkpoint-dead.tmp").write_bytes(b"half a checkpoint")
    code, _, err = run_cli("train", TOY, "--out", run, "--resume")
    assert code == 0 and "removed 1 temp file" in err
    assert not (run / ".checkpoint-dead.tmp").exists()
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [1, 2, 3]


# --- 12. --lr 0 and --resume ---------------------------------------------------------------------
def test_lr_zero_is_honoured(tmp_path, run_cli, toy_path):
    run = tmp_path / "lr0"
    assert run_cli("train", TOY, "--out", run, "--lr", "0", "--max-steps", "2", *QUICK)[0] == 0
    payload = load_checkpoint(run)
    from toy_models import ToyAR

    torch.manual_seed(0)
    assert payload["train"]["lr"] == 0 and torch.equal(payload["model_state"]["weight"], ToyAR().state_dict()["weight"])


def test_resume_refuses_contradictions_and_says_when_done(vae_run, run_cli, tmp_path):
    for extra, what in [(("--lr", "0.5"), "--lr 0.5"), (("--batch-size", "8"), "--batch-size 8"),
                        (("--data", "mnist5k"), "--data 'mnist5k'"), (("--set", "hidden=64"), "--set hidden 64"),
                        (("--levels", "4"), "--levels 4"), (("--classes", "0-4"), "--classes"),
                        (("--seed", "3"), "--seed 3")]:
        line = one_line_error(run_cli("train", "vae", "--out", vae_run, "--resume", *extra), "contradicts")
        assert what in line, line
    # the run's own values are fine, and a finished run says there is nothing left
    code, out, err = run_cli("train", "vae", "--out", vae_run, "--resume", "--batch-size", "16", "--lr", "0.001")
    assert code == 0 and "nothing left to train" in err and json.loads(out)["epoch"] == 1


# --- 16. one-line errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("device, match", [("foo", "not a device name"), ("meta", "cpu or cuda devices only"),
                                           ("cuda", "no CUDA device"), ("cuda:7", "CUDA")])
def test_bad_device(device, match, tmp_path, run_cli):
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has those devices")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    one_line_error(run_cli("train", "vae", "--out", tmp_path / "d", "--device", device, *VAE_SMALL), match)
    assert not (tmp_path / "d").exists()  # nothing left behind


def test_disk_full_on_the_first_save(tmp_path, run_cli, monkeypatch, toy_path):
    from fastgen.train import checkpoint

    real = checkpoint.tempfile.mkstemp

    def full_disk(*a, **k):  # the temp file lives on a device that is always full
        fd, path = real(*a, **k)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), path

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", full_disk)
    one_line_error(run_cli("train", TOY, "--out", tmp_path / "full", "--max-steps", "1", *QUICK),
                   "no space left on device")
    assert [f for f in os.listdir(tmp_path / "full") if not f.startswith(".checkpoint.pt.lock")] == []


def test_damaged_resume_payloads(vae_run, tmp_path, run_cli):
    for name, damage in [("nostate", lambda p: p.pop("state")), ("kwargs", lambda p: p["model"].update(kwargs=[1])),
                         ("epoch", lambda p: p["state"].update(epoch="x"))]:
        payload = load_checkpoint(vae_run)
        damage(payload)
        save_checkpoint(tmp_path / name, payload)
        one_line_error(run_cli("train", "vae", "--out", tmp_path / name, "--resume"), str(tmp_path / name))


def test_out_of_memory_model_size(tmp_path, run_cli, monkeypatch):
    # sized on the meta device first: refused before any allocation
    one_line_error(run_cli("train", "vae", "--out", tmp_path / "m", "--set", "hidden=100000000", *QUICK),
                   "GiB for weights")
    from fastgen.train import registry

    monkeypatch.setattr(registry, "_check_memory", lambda *a: None)  # the real allocation fails too
    one_line_error(run_cli("train", "vae", "--out", tmp_path / "m", "--set", "hidden=1000000000000", *QUICK),
                   "cannot be built: out of memory")


def test_out_is_an_existing_file(tmp_path, run_cli):
    (tmp_path / "notes.txt").write_text("keep")
    one_line_error(run_cli("train", "vae", "--out", tmp_path / "notes.txt", *VAE_SMALL), "existing file")
    one_line_error(run_cli("train", "vae", "--out", tmp_path / "notes.txt" / "run", *VAE_SMALL), "is a file")
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_bogus_impl_env_does_not_break_import(tmp_path):
    env = dict(subprocess_env(), FASTGEN_IMPL="bogus")
    code = ("import fastgen, torch\n"
            "try:\n    fastgen.ops.reparameterize(torch.zeros(2, 3), torch.zeros(2, 3))\n"
            "except ValueError as e:\n    print('first op:', e)\n")
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "first op: FASTGEN_IMPL must be one of" in proc.stdout, proc.stderr
    proc = subprocess.run([PYTHON, "-m", "fastgen", "info"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("fastgen: error: FASTGEN_IMPL"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_torchrun_error_printed_once(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    env = subprocess_env()
    env.update(MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME=env.get("GLOO_SOCKET_IFNAME", "lo"))
    proc = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "fastgen", "train", "vae", "--out", str(tmp_path / "r"), "--set", "latent_dim=0",
                           *QUICK], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if "fastgen: error:" in ln]
    assert len(lines) == 1 and "latent_dim" in lines[0], proc.stderr[-3000:]


# --- 17. small promises ----------------------------------------------------------------------------
def test_features_output_path_is_the_file_written(vae_run, tmp_path, run_cli):
    code, out, _ = run_cli("features", vae_run, "-o", tmp_path / "feats")
    path = json.loads(out)["output"]
    assert code == 0 and path == str(tmp_path / "feats.npy") and np.load(path).shape[1] == 2


def test_set_options_that_contradict_the_data_or_the_name(tmp_path, run_cli):
    one_line_error(run_cli("train", "made", "--out", tmp_path / "a", "--set", "num_levels=5", *QUICK),
                   "data decides the number of pixel levels")
    one_line_error(run_cli("train", "pixelrnn-row", "--out", tmp_path / "b", "--set", "kind=diagonal", *QUICK),
                   "has kind='row'")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_score_json_units_and_out_keys(vae_run, run_cli):
    code, out, _ = run_cli("score", vae_run, "--k", "2", "--anomaly-classes", "5-9")
    r = json.loads(out)
    assert code == 0 and {"bits_per_dim_in", "bits_per_dim_out", "nll_nats_in", "nll_nats_out"} <= set(r)
    assert math.isclose(r["bits_per_dim_out"], r["nll_nats_out"] / (64 * math.log(2)))
    assert r["units"]["nll_nats"].startswith("nats per example") and "bits per dimension" in r["units"]["bits_per_dim"]


def test_gaussian_vae_density_has_its_own_key(tmp_path, run_cli):
    run = tmp_path / "g"
    assert run_cli("train", "vae", "--out", run, "--binarize", "none", "--max-steps", "1", *VAE_SMALL)[0] == 0
    code, out, _ = run_cli("score", run, "--k", "2")
    r = json.loads(out)
    assert code == 0 and "nll_nats" not in r and "bits_per_dim" not in r
    assert math.isfinite(r["neg_log_density_nats"]) and "continuous" in r["units"]["note"]


def test_no_progress_bar_when_stderr_is_not_a_terminal(monkeypatch):
    pytest.importorskip("tqdm")
    import io

    from fastgen.train.distributed import DistInfo

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert loop._progress(DistInfo(), True, 10, "x") is None

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = loop._progress(DistInfo(), True, 10, "x")
    assert bar is not None
    bar.close()


def test_import_fastgen_exposes_models_and_data():
    code = "import fastgen; print(fastgen.models.MADE.__name__, fastgen.data.load.__name__, 'models' in dir(fastgen))"
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 0 and proc.stdout.split() == ["MADE", "load", "True"], proc.stderr


def _readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_readme_python_example_runs():
    block = re.search(r"## Choosing the implementation\s+```python\n(.*?)```", _readme(), re.S).group(1)
    scope = {}
    exec(compile(block, "README", "exec"), scope)  # noqa: S102  (our own README)
    import fastgen

    fastgen.set_impl("auto")
    assert scope["z"].shape == scope["mu"].shape


def test_readme_anomaly_example_trains_on_the_normal_classes():
    lines = re.search(r"### Command line\s+```\n(.*?)```", _readme(), re.S).group(1).splitlines()
    score = next(ln for ln in lines if "--anomaly-classes 5-9" in ln)
    run = score.split()[2]
    train = next(ln for ln in lines if ln.startswith("fastgen train") and f"--out {run}" in ln)
    assert "--classes 0-4" in train, train


def test_legacy_checkpoint_without_checksum_loads_with_a_warning(tmp_path):
    """Version-1 checkpoints predate checksums: loaded (same restricted load and structure
    checks) with a warning; a version-1 file that claims a checksum is refused."""
    import warnings

    import torch

    from fastgen.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {"name": "made", "kwargs": {}, "input_shape": [1, 2, 2]},
                           "data": {"name": "digits"}, "model_state": {"w": torch.ones(3)}})
    payload = torch.load(path, weights_only=True)
    payload.pop("checksum")
    payload["version"] = 1
    torch.save(payload, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_checkpoint(path)
    assert torch.equal(loaded["model_state"]["w"], torch.ones(3))
    assert any("cannot be verified" in str(w.message) for w in caught)
    payload["checksum"] = "0" * 64
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="cannot carry a checksum"):
        load_checkpoint(path)
