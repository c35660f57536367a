"""Issue 12.3: the training loop by family. Every registry model has exactly one family class of
the fixed table; each family's step learns; a non-finite loss never reaches the weights; a name
(from a checkpoint or anywhere) selects only a class of the table; sampling and scoring never
import the training loop."""
import ast
import json
import os
import subprocess

import pytest
import torch

from fastgen.train.checkpoint import load_checkpoint, save_checkpoint
from fastgen.train.distributed import DistInfo
from fastgen.train.families import (FAMILIES, AutoregressiveFamily, Family, GANFamily, VAEFamily,
                                    get_family)
from fastgen.train.registry import MODELS, ModelError, ModelSpec, build_model, model_class

from conftest import PYTHON, ROOT, subprocess_env


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registry_model_has_exactly_one_family(name):
    spec = MODELS[name]
    assert [f for f in FAMILIES.values() if f is spec.family] == [spec.family]
    assert FAMILIES[spec.family.name] is spec.family
    try:
        cls = model_class(spec)
    except ModelError:
        pytest.skip(f"{name} is not in this build")
    # the registry's family agrees with the class: a subclass of that family's model base only
    assert [f for f in FAMILIES.values() if issubclass(cls, f.model_base())] == [spec.family]


def test_names_select_only_the_table():
    assert get_family("ar") is AutoregressiveFamily and get_family(VAEFamily) is VAEFamily
    assert ModelSpec("x", "X", "gan").family is GANFamily
    rogue = type("Rogue", (AutoregressiveFamily,), {})
    for bad in ("AR", "fastgen.train.families:GANFamily", "os:system", None, Family, rogue, object):
        with pytest.raises(ValueError, match="family must be one of 'ar', 'vae', 'gan'"):
            get_family(bad)
    with pytest.raises(ValueError, match="family must be one of"):
        ModelSpec("x", "X", "nope")


# name, model options, lr, pixel levels (None: grey), the stat a step reduces
CASES = [("made", {"hidden_sizes": [32]}, 1e-2, 2, "loss"),
         ("vae", {"hidden": 16, "latent_dim": 2}, 1e-2, 2, "loss"),
         ("dcgan", {"width": 4, "latent_dim": 4}, 2e-3, None, "d_loss")]


def _tiny(name, kwargs, lr, levels):
    torch.manual_seed(0)
    spec = MODELS[name]
    model, _ = build_model(spec, (1, 8, 8), levels, kwargs)
    family = spec.family
    opts = family.optimizers(model, lr)
    return model, family, opts, family.wrap(model, DistInfo())


def _batch():
    """16 binary 8x8 images, brighter to the right (something to learn)."""
    g = torch.Generator().manual_seed(0)
    return (torch.rand(16, 1, 8, 8, generator=g) < torch.linspace(0.1, 0.9, 8).view(1, 1, 1, 8)).float()


@pytest.mark.parametrize("name, kwargs, lr, levels, stat", CASES, ids=[c[0] for c in CASES])
def test_each_family_step_reduces_its_loss(name, kwargs, lr, levels, stat):
    model, family, opts, nets = _tiny(name, kwargs, lr, levels)
    # the optimisers own every parameter exactly once
    owned = [id(p) for o in opts.values() for group in o.param_groups for p in group["params"]]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())
    x, noise, checked = _batch(), torch.Generator().manual_seed(1), []
    val_before = family.validation_loss(model, x)
    stats = [family.step(model, nets, opts, x, noise, 1 / len(x), checked.append) for _ in range(20)]
    assert checked == stats  # every step's stats went through the divergence check
    first, last = stats[0][stat], sum(s[stat] for s in stats[-3:]) / 3
    assert last < first - 0.05, (first, last)
    if family.has_likelihood:  # the validation loss (eval mode, same images) falls too
        assert family.validation_loss(model, x) < val_before - 1
    else:
        assert val_before is None and family.validation_loss(model, x) is None


@pytest.mark.parametrize("name, kwargs, lr, levels, stat", CASES[:2], ids=[c[0] for c in CASES[:2]])
def test_a_non_finite_loss_never_reaches_the_weights(name, kwargs, lr, levels, stat):
    model, family, opts, nets = _tiny(name, kwargs, lr, levels)
    before = [p.detach().clone() for p in model.parameters()]

    def diverged(stats):
        raise ArithmeticError(f"{stats} refused")

    with pytest.raises(ArithmeticError, match="refused"):
        family.step(model, nets, opts, _batch(), torch.Generator().manual_seed(1), 1 / 16, diverged)
    assert all(torch.equal(a, p) and p.grad is None for a, p in zip(before, model.parameters()))


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    pytest.importorskip("sklearn")
    from fastgen.cli import main

    out = tmp_path_factory.mktemp("fam") / "vae"
    torch.set_num_threads(1)
    assert main(["train", "vae", "--out", str(out), "--max-steps", "1", "--limit", "32", "--batch-size", "16",
                 "--set", "hidden=16", "--set", "latent_dim=2", "--no-progress"]) == 0
    return out


def test_a_checkpoint_family_field_chooses_nothing(tiny_vae, tmp_path):
    from fastgen.train.evaluate import load_trained

    payload = load_checkpoint(tiny_vae)
    assert payload["model"]["family"] == "vae"
    payload["model"]["family"] = "gan"  # a lie: the registry name decides
    save_checkpoint(tmp_path, payload)
    _, _, spec = load_trained(tmp_path)
    assert spec.family is VAEFamily


def test_sampling_and_scoring_never_import_the_training_loop(tiny_vae, tmp_path):
    code = ("import json, sys\n"
            "from fastgen.cli import main\n"
            f"run, tmp = {str(tiny_vae)!r}, {str(tmp_path)!r}\n"
            "codes = [main(a) for a in (['sample', run, '-n', '2', '-o', tmp + '/s.png'], ['score', run, '--k', '2'],\n"
            "                          ['features', run, '-o', tmp + '/f.npy'], ['info'])]\n"
            "print(json.dumps({'codes': codes, 'loop': 'fastgen.train.loop' in sys.modules}))\n")
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"codes": [0, 0, 0, 0], "loop": False}


@pytest.mark.parametrize("path", ["fastgen/train/evaluate.py", "fastgen/train/registry.py",
                                  "fastgen/train/families.py", "fastgen/data.py",
                                  "fastgen/data_files.py"])
def test_lower_modules_do_not_import_the_loop(path):
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not {m for m in imported if m and m.startswith("fastgen.train.loop")}, imported
