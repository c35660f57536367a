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


# --- CPU kernels for several vector ISAs, one chosen at import ------------------------------
def test_choice_of_cpu_capability():
    built = ("default", "avx2", "avx512")
    assert _ext._choose(built, "avx512", "avx512") == "avx512"
    assert _ext._choose(built, "avx2", "avx512") == "avx2"          # the CPU caps it
    assert _ext._choose(built, "avx512", "avx2") == "avx2"          # FASTGEN_CPU_CAPABILITY caps it
    assert _ext._choose(built, "avx512", "default") == "default"
    assert _ext._choose(("default", "avx2"), "avx512", "avx512") == "avx2"  # only what was built
    assert _ext._choose(("avx512",), "avx2", "avx512") is None


def test_build_info_reports_the_cpu_capability():
    if not _ext.AVAILABLE:
        pytest.skip("extension not built")
    info = fastgen.build_info()
    assert "default" in info["cpu_capabilities"]
    assert info["cpu_capability"] in info["cpu_capabilities"]
    if not os.environ.get("FASTGEN_CPU_CAPABILITY"):  # the widest this CPU runs, of those built
        assert info["cpu_capability"] == _ext._choose(tuple(info["cpu_capabilities"]), _ext._cpu_supported(),
                                                      "avx512")


_CAPPED_RUN = r'''
import warnings, torch
warnings.simplefilter("error", RuntimeWarning)
import fastgen
from fastgen.ops import masked_linear, discriminator_loss, row_lstm_scan
from fastgen.reference.masked_linear import masked_linear as ref_ml
from fastgen.reference.row_lstm_scan import row_lstm_scan as ref_scan
print(fastgen.build_info()["cpu_capability"])
g = torch.Generator().manual_seed(0)
x, w = torch.randn(33, 70, generator=g), torch.randn(50, 70, generator=g)
m = torch.rand(50, 70, generator=g) < 0.5
torch.testing.assert_close(masked_linear(x, w, m), ref_ml(x, w, m), rtol=1e-5, atol=1e-5)
xs, ws = torch.randn(2, 12, 3, 37, generator=g), torch.randn(12, 3, 3, generator=g) * 0.3
torch.testing.assert_close(row_lstm_scan(xs, ws), ref_scan(xs, ws), rtol=1e-5, atol=1e-5)
r = torch.randn(1001, generator=g) * 30
assert torch.isfinite(discriminator_loss(r, -r))
'''


@pytest.mark.parametrize("cap", ["default", "avx2"])
def test_capped_cpu_capability_loads_and_computes(cap):
    """FASTGEN_CPU_CAPABILITY picks the narrower kernels (when built and the CPU runs them)."""
    import subprocess
    import sys

    if not _ext.AVAILABLE or cap not in _ext.CPU_CAPABILITIES:
        pytest.skip(f"{cap} kernels not built")
    if _ext.CAPABILITIES.index(cap) > _ext.CAPABILITIES.index(_ext._cpu_supported()):
        pytest.skip(f"this CPU does not run {cap}")
    out = subprocess.run([sys.executable, "-c", _CAPPED_RUN], capture_output=True, text=True,
                         env={**os.environ, "FASTGEN_CPU_CAPABILITY": cap})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[0] == cap


def test_bad_cpu_capability_warns_and_is_ignored():
    import subprocess
    import sys

    if not _ext.AVAILABLE:
        pytest.skip("extension not built")
    out = subprocess.run([sys.executable, "-c", "import fastgen; print(fastgen.build_info()['cpu_capability'])"],
                         capture_output=True, text=True, env={**os.environ, "FASTGEN_CPU_CAPABILITY": "sse9"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "FASTGEN_CPU_CAPABILITY must be one of" in out.stderr
    assert out.stdout.split()[-1] in _ext.CPU_CAPABILITIES


@pytest.mark.parametrize("cap,forbidden", [("default", ("%ymm", "%zmm")), ("avx2", ("%zmm",))])
def test_narrow_kernel_libraries_hold_no_wider_instructions(cap, forbidden):
    """The AVX2 library must run on an AVX2-only CPU: not one AVX-512 (zmm) instruction in it;
    the default one no AVX either."""
    import shutil
    import subprocess

    path = _ext._built_libraries().get(cap)
    if path is None or shutil.which("objdump") is None:
        pytest.skip(f"no {cap} library or no objdump")
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True, text=True).stdout
    assert len(text) > 1000
    for reg in forbidden:
        assert reg not in text, f"{os.path.basename(path)} uses {reg} registers"


def test_make_gpu_check_without_a_gpu_says_so_and_succeeds():
    import shutil
    import subprocess

    if torch.cuda.is_available() or shutil.which("make") is None or shutil.which("nvidia-smi"):
        pytest.skip("a GPU (or nvidia-smi) is present, or no make")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(["make", "--no-print-directory", "-C", root, "gpu-check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "no GPU: nothing to check"
