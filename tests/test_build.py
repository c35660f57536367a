"""The build itself: the compiled extension must be there (CI sets FASTGEN_EXPECT_CUDA=1 to
demand the CUDA kernels too), and the selector must refuse what it cannot serve."""
import os

import pytest
import torch

import fastgen
from fastgen import _ext, _impl


def test_extension_loaded():
    if os.environ.get("FASTGEN_ALLOW_NO_EXT") == "1":
        pytest.skip("FASTGEN_ALLOW_NO_EXT=1")
    assert _ext.AVAILABLE, f"fastgen._C failed to load: {_ext.LOAD_ERROR}"


def test_cuda_kernels_built_when_expected():
    if os.environ.get("FASTGEN_EXPECT_CUDA") != "1":
        pytest.skip("FASTGEN_EXPECT_CUDA is not 1")
    assert _ext.CUDA_BUILT
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastgen::reparameterize", "CUDA")


def test_unknown_impl_name_is_rejected():
    with pytest.raises(ValueError, match="impl must be one of"):
        fastgen.set_impl("fast")


def test_use_impl_restores_previous():
    before = fastgen.get_impl()
    with fastgen.use_impl("reference"):
        assert fastgen.get_impl() == "reference"
    assert fastgen.get_impl() == before


def test_auto_picks_cpp_on_cpu():
    with fastgen.use_impl("auto"):
        expected = "cpp" if _ext.AVAILABLE else "reference"
        assert _impl.select("op", torch.device("cpu")) == expected


def test_cuda_on_cpu_tensors_raises():
    with fastgen.use_impl("cuda"), pytest.raises(fastgen.ImplUnavailableError, match="cuda"):
        _impl.select("op", torch.device("cpu"))


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with fastgen.use_impl("triton"), pytest.raises(fastgen.ImplUnavailableError, match="TRITON_INTERPRET"):
        _impl.select("op", torch.device("cpu"))


def test_cpp_without_extension_raises(monkeypatch):
    monkeypatch.setattr(_ext, "AVAILABLE", False)
    with fastgen.use_impl("cpp"), pytest.raises(fastgen.ImplUnavailableError, match="not built"):
        _impl.select("op", torch.device("cpu"))
    with fastgen.use_impl("auto"):
        assert _impl.select("op", torch.device("cpu")) == "reference"


def test_env_var_is_validated():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import fastgen"], capture_output=True, text=True,
                         env={**os.environ, "FASTGEN_IMPL": "bogus"})
    assert out.returncode != 0 and "FASTGEN_IMPL must be one of" in out.stderr
