import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


@pytest.fixture(autouse=True)
def _one_thread():
    """The CLI tests train real (tiny) models: one thread avoids oversubscribing a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def toy_path(monkeypatch):
    """Makes tests/cli/toy_models.py importable as `toy_models` (the test-only AR model)."""
    monkeypatch.syspath_prepend(HERE)
    return HERE


def subprocess_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, HERE]))
    return env


@pytest.fixture
def run_cli(capsys):
    """main(argv) in process -> (exit code, stdout, stderr)."""
    from fastgen.cli import main

    def run(*argv):
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse usage errors exit with 2
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


PYTHON = sys.executable
