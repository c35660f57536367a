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

    # a bad value does not break `import fastgen`; the first op (or get_impl) raises, naming it
    code = "import fastgen\ntry:\n    fastgen.get_impl()\nexcept ValueError as e:\n    print(e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "FASTGEN_IMPL": "bogus"})
    assert out.returncode == 0 and "FASTGEN_IMPL must be one of" in out.stdout, out.stderr


def test_missing_extension_falls_back_with_one_warning():
    """Without fastgen._C, import works, one warning says why, and every op runs its reference."""
    import subprocess
    import sys

    code = r'''
import importlib.abc, sys, warnings
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "fastgen._C":
            raise ImportError("blocked for the test")
sys.meta_path.insert(0, Block())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import fastgen
    import fastgen.ops
import torch
mine = [w for w in caught if "fastgen" in str(w.message)]
assert len(mine) == 1 and "falls back" in str(mine[0].message), [str(w.message) for w in mine]
mu = torch.randn(3, 4)
z, kl = fastgen.ops.reparameterize(mu, mu, mu)
assert fastgen._impl.select("x", mu.device) == "reference"
try:
    with fastgen.use_impl("cpp"):
        fastgen.ops.reparameterize(mu, mu, mu)
except fastgen.ImplUnavailableError as e:
    print("refused:", e)
'''
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "refused:" in out.stdout and "not built" in out.stdout


def test_import_fastgen_first_loads_the_extension():
    """`import fastgen` before torch must still load fastgen._C (it links against torch's libs)."""
    import subprocess
    import sys

    if os.environ.get("FASTGEN_ALLOW_NO_EXT") == "1":
        pytest.skip("FASTGEN_ALLOW_NO_EXT=1")
    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c",
                          "import fastgen; assert fastgen.build_info()['cpp'], fastgen.build_info()"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
