"""Shared test set-up.

Without CUDA, Triton kernels run on CPU tensors under the interpreter: TRITON_INTERPRET=1 must be
set before anything imports triton (importing torch does not). With CUDA they are compiled and
run on CUDA tensors (the interpreter would test nothing of the GPU code).

TF32 is off for the whole run: PyTorch lets cuDNN use it for fp32 convolutions by default, which
would make the F.conv2d / F.conv1d oracles TF32-accurate on a GPU and fail full-fp32 kernels
against their 1e-5 tolerances.

`pytest -m gpu` is the GPU suite: every test that needs a CUDA device carries the `gpu` marker,
explicitly or, for tests parametrised over `impl`, automatically for the cuda and (on a GPU)
triton parameters.
"""
import os

import torch  # noqa: E402  (does not import triton)

GPU = torch.cuda.is_available()
if not GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fastgen  # noqa: E402
from fastgen import _ext, _impl  # noqa: E402

if GPU:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


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
# Ours: the runnable implementations other than the reference. A property of our kernels (their
# gradients, their determinism) is tested on these, e.g. with
# @pytest.mark.parametrize("impl", KERNEL_IMPLS, indirect=True): the reference's gradient is
# torch's own autograd, which gradcheck-ing would not test anything of fastgen.
KERNEL_IMPLS = [i for i in RUNNABLE_IMPLS if i != "reference"]
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


def _runs_on_gpu(item):
    """A test parametrised over `impl` whose implementation runs on CUDA tensors here."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    name = params.get("impl") or params.get("impl_name")
    return isinstance(name, str) and impl_device(name) == "cuda"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if GPU and _runs_on_gpu(item):
            item.add_marker(pytest.mark.gpu)
    if GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Shapes shared by the op tests: a tiny one, odd ones, a 3-D one and empty ones.
SHAPES = [(1, 1), (7, 33), (3, 5, 17), (0, 8), (4, 0)]
FLOAT_DTYPES = [torch.float32, torch.float64]
