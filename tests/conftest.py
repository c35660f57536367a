"""Shared test set-up. TRITON_INTERPRET must be set before anything imports triton, so that
Triton kernels run on CPU tensors here."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import fastgen  # noqa: E402
from fastgen import _ext, _impl  # noqa: E402

GPU = torch.cuda.is_available()


def _runnable_impls():
    impls = ["reference"]
    if _ext.AVAILABLE:
        impls.append("cpp")
    if _impl.triton_available("cuda" if GPU else "cpu"):
        impls.append("triton")
    if GPU and _ext.CUDA_BUILT:
        impls.append("cuda")
    return impls


RUNNABLE_IMPLS = _runnable_impls()
# The implementations that run on a device type here ("cuda" needs a GPU; triton runs on the
# GPU when there is one, else on CPU tensors under the interpreter).
TRITON_DEVICE = "cuda" if GPU else "cpu"


def impl_device(impl):
    """The device whose tensors `impl` serves in this test run."""
    if impl == "cuda" or (impl == "triton" and GPU):
        return "cuda"
    return "cpu"


@pytest.fixture(params=RUNNABLE_IMPLS)
def impl(request):
    """Each runnable implementation in turn, active (fastgen.use_impl) for the test."""
    with fastgen.use_impl(request.param):
        yield request.param


@pytest.fixture
def device(impl):
    return impl_device(impl)


def assert_close_bf16(ours, ref_bf16, truth):
    """The bf16 rule: our bf16 result's max error against the float64 truth is at most twice
    the reference's own bf16 error (plus a hair of the output's scale)."""
    truth = truth.double()
    err_ours = (ours.double() - truth).abs().max().item() if truth.numel() else 0.0
    err_ref = (ref_bf16.double() - truth).abs().max().item() if truth.numel() else 0.0
    scale = truth.abs().max().item() if truth.numel() else 0.0
    assert err_ours <= 2 * err_ref + 1e-6 * scale, (
        f"bf16 error {err_ours:.3g} exceeds twice the reference's own bf16 error {err_ref:.3g}")


def pytest_collection_modifyitems(config, items):
    if GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Shapes shared by the op tests: a tiny one, odd ones, a 3-D one and empty ones.
SHAPES = [(1, 1), (7, 33), (3, 5, 17), (0, 8), (4, 0)]
FLOAT_DTYPES = [torch.float32, torch.float64]
