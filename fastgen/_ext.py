"""Loads the compiled extension once; without it every op falls back to its reference.

fastgen._C holds the op schemas, their autograd and the CUDA kernels. The CPU kernels are built
once per vector ISA, as ATen builds its own (fastgen._cpu_default, _cpu_avx2, _cpu_avx512: the
same sources, compiled with each ISA's flags), and exactly one of them is loaded here: the
widest that this CPU supports (as torch detects it), capped by FASTGEN_CPU_CAPABILITY
(default|avx2|avx512, like ATEN_CPU_CAPABILITY). So a build copied to an AVX2-only machine runs
its AVX2 kernels instead of dying on an illegal instruction.
"""
import importlib.machinery
import os
import warnings

import torch  # (loads libc10/libtorch, which the extension libraries link against)

CAPABILITIES = ("default", "avx2", "avx512")  # narrow to wide


def _cpu_supported():
    """The widest capability this CPU (and OS) runs, from torch's own detection."""
    try:
        cap = torch.backends.cpu.get_cpu_capability().upper()
    except Exception:  # noqa: BLE001  (an old or unusual torch: take the safe one)
        return "default"
    if cap.startswith("AVX512"):
        return "avx512"
    return "avx2" if cap.startswith("AVX2") else "default"


def _requested():
    """FASTGEN_CPU_CAPABILITY, validated (a bad value warns and is ignored, never breaks import)."""
    value = os.environ.get("FASTGEN_CPU_CAPABILITY", "").strip().lower()
    if not value:
        return CAPABILITIES[-1]
    if value not in CAPABILITIES:
        warnings.warn(f"fastgen: FASTGEN_CPU_CAPABILITY must be one of {', '.join(CAPABILITIES)}; got "
                      f"{value!r}; ignored", RuntimeWarning, stacklevel=3)
        return CAPABILITIES[-1]
    return value


def _built_libraries():
    """capability -> path of its fastgen._cpu_<cap> library, for those built."""
    here = os.path.dirname(os.path.abspath(__file__))
    found = {}
    for cap in CAPABILITIES:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(here, f"_cpu_{cap}{suffix}")
            if os.path.exists(path):
                found[cap] = path
                break
    return found


def _choose(built, supported, requested):
    limit = min(CAPABILITIES.index(supported), CAPABILITIES.index(requested))
    usable = [c for c in CAPABILITIES[:limit + 1] if c in built]
    return usable[-1] if usable else None


try:
    from fastgen import _C  # noqa: F401  (loading it registers the fastgen:: ops)

    CPU_CAPABILITIES = tuple(_built_libraries())  # built, narrow to wide
    CPU_CAPABILITY = _choose(CPU_CAPABILITIES, _cpu_supported(), _requested())
    if CPU_CAPABILITY is None:
        raise ImportError(f"no CPU kernel library fastgen/_cpu_<capability> usable on this CPU is built "
                          f"(built: {list(CPU_CAPABILITIES) or 'none'})")
    torch.ops.load_library(_built_libraries()[CPU_CAPABILITY])  # registers the CPU kernels

    AVAILABLE = True
    native = _C  # native bindings (eager fast paths of dispatch-bound ops)
    CUDA_BUILT = bool(getattr(_C, "cuda_built", False))
    LOAD_ERROR = None
except (ImportError, OSError) as exc:  # not built, or built against another torch
    AVAILABLE = False
    native = None
    CUDA_BUILT = False
    CPU_CAPABILITY = None
    CPU_CAPABILITIES = ()
    LOAD_ERROR = exc
    warnings.warn(
        "fastgen: the compiled extension fastgen._C is not available "
        f"({type(exc).__name__}: {exc}); every op falls back to its pure-PyTorch reference. "
        "Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )
