"""Loads the compiled extension fastgen._C once; without it every op falls back to its reference."""
import warnings

import torch  # noqa: F401  (loads libc10/libtorch, which fastgen._C links against)

try:
    from fastgen import _C  # noqa: F401  (loading it registers the fastgen:: ops)

    AVAILABLE = True
    native = _C  # native bindings (eager fast paths of dispatch-bound ops)
    CUDA_BUILT = bool(getattr(_C, "cuda_built", False))
    CPU_CAPABILITY = getattr(_C, "cpu_capability", "default")  # at::vec width of the CPU kernels
    LOAD_ERROR = None
except (ImportError, OSError) as exc:  # not built, or built against another torch
    AVAILABLE = False
    native = None
    CUDA_BUILT = False
    CPU_CAPABILITY = None
    LOAD_ERROR = exc
    warnings.warn(
        "fastgen: the compiled extension fastgen._C is not available "
        f"({type(exc).__name__}: {exc}); every op falls back to its pure-PyTorch reference. "
        "Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )
