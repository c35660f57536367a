"""fastgen: fast, exact PyTorch building blocks for the classic deep generative models."""
from fastgen import _source_tree

_source_tree.install()  # fastgen.kernels from the tree's kernels/ when run from the source tree

from fastgen import _ext  # noqa: E402
from fastgen._impl import IMPLS, ImplUnavailableError, get_impl, set_impl, use_impl  # noqa: E402
from fastgen import ops, nn  # noqa: E402  (registers the ops)

__version__ = "0.1.0"
__all__ = ["IMPLS", "ImplUnavailableError", "get_impl", "set_impl", "use_impl", "ops", "nn",
           "models", "data", "__version__"]
_LAZY = ("models", "data", "train")  # imported on first use: `import fastgen` stays light


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"fastgen.{name}")
    raise AttributeError(f"module 'fastgen' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def build_info():
    """Which implementations this build has."""
    import torch

    return {
        "version": __version__,
        "torch": torch.__version__,
        "cpp": _ext.AVAILABLE,
        "cpu_capability": _ext.CPU_CAPABILITY,        # the CPU kernels in use (default|avx2|avx512)
        "cpu_capabilities": list(_ext.CPU_CAPABILITIES),  # those built
        "cuda_kernels": _ext.CUDA_BUILT,
        "cuda_device": torch.cuda.is_available(),
        "extension_error": None if _ext.LOAD_ERROR is None else str(_ext.LOAD_ERROR),
    }
