"""`fastgen train MODEL --data mnist` and `fastgen score RUN --data mnist` end to end."""
from tests.test_mnist import needs_wheel


@needs_wheel
def test_train_made_on_mnist_end_to_end(tmp_path, run_cli):
    out = tmp_path / "made"
    code, _, err = run_cli("train", "made", "--data", "mnist", "--max-steps", "5", "--out", out,
                           "--set", "hidden_sizes=[64]", "--no-progress")
    assert code == 0, err
    code, stdout, err = run_cli("score", out, "--data", "mnist")
    assert code == 0, err
    assert "nll" in stdout.lower()
