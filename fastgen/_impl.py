"""Choice of implementation: the one place that decides between an op's siblings.

Names: "auto", "reference", "cpp", "cuda", "triton". "auto" picks cpp for CPU tensors (the
reference when the extension is not built) and the op's declared GPU default for CUDA tensors.
An explicit choice that cannot serve the given tensors raises; it never falls back silently.
An op may declare "vendor" as its GPU default: PyTorch's own cuBLAS/cuDNN call on a pre-masked
weight (masked_linear, masked_conv2d: our SIMT kernels cannot match tensor-core GEMMs). It is
only ever auto's choice; "cuda" and "triton" stay selectable by name.
The choice is process-global (set_impl, use_impl, or the environment variable FASTGEN_IMPL).
"""
import contextlib
import importlib.util
import os

from fastgen import _ext

IMPLS = ("auto", "reference", "cpp", "cuda", "triton")


class ImplUnavailableError(RuntimeError):
    """The requested implementation cannot run on these tensors in this build."""


def _check_name(name, source):
    if not isinstance(name, str) or name.strip().lower() not in IMPLS:
        raise ValueError(f"{source} must be one of {', '.join(IMPLS)}; got {name!r}")
    return name.strip().lower()


def _from_env():
    # A bad FASTGEN_IMPL must not break `import fastgen` (nor tools that only import it): it is
    # kept as an error and raised by the first op (or get_impl), with the same clear message.
    try:
        return _check_name(os.environ.get("FASTGEN_IMPL", "auto") or "auto", "FASTGEN_IMPL"), None
    except ValueError as exc:
        return None, str(exc)


_state = dict(zip(("impl", "env_error"), _from_env()))


def _current():
    if _state["impl"] is None:
        raise ValueError(f"{_state['env_error']} (set it to a valid name, or unset it)")
    return _state["impl"]


def get_impl():
    """The implementation name currently asked for (may be "auto")."""
    return _current()


def set_impl(name):
    """Set the implementation globally; returns the previous name."""
    previous = _state["impl"]
    _state["impl"] = _check_name(name, "impl")
    return previous


@contextlib.contextmanager
def use_impl(name):
    """Context manager: run the enclosed ops with implementation `name`."""
    previous = set_impl(name)
    try:
        yield
    finally:
        _state["impl"] = previous


def triton_available(device_type):
    if importlib.util.find_spec("triton") is None:
        return False
    if device_type == "cuda":
        return True
    return device_type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"


def can_serve(impl, device_type):
    """(True, "") when implementation `impl` can run on `device_type` here, else (False, why)."""
    if impl == "reference":
        return True, ""
    if impl == "cpp":
        if not _ext.AVAILABLE:
            return False, f"the compiled extension is not built ({_ext.LOAD_ERROR})"
        return device_type == "cpu", f"cpp runs on CPU tensors, these are on {device_type}"
    if impl == "cuda":
        if not _ext.CUDA_BUILT:
            return False, "the extension was built without CUDA kernels"
        return device_type == "cuda", f"cuda runs on CUDA tensors, these are on {device_type}"
    if impl == "triton":
        if importlib.util.find_spec("triton") is None:
            return False, "triton is not installed"
        ok = triton_available(device_type)
        return ok, ("triton on CPU tensors needs TRITON_INTERPRET=1 set before fastgen is imported"
                    if device_type == "cpu" else f"triton cannot run on {device_type} tensors")
    raise AssertionError(impl)


def select(op, device, gpu_default="cuda"):
    """The implementation that runs `op` on tensors of `device`; raises if the asked one can't."""
    impl = _current()
    device_type = getattr(device, "type", None) or str(device)
    if impl == "auto":
        if device_type == "cpu":
            return "cpp" if _ext.AVAILABLE else "reference"
        if device_type == "cuda":
            if gpu_default == "vendor":
                return "vendor"
            other = "triton" if gpu_default == "cuda" else "cuda"
            for candidate in (gpu_default, other):
                if can_serve(candidate, device_type)[0]:
                    return candidate
        return "reference"
    ok, why = can_serve(impl, device_type)
    if not ok:
        raise ImplUnavailableError(f"fastgen.{op}: implementation {impl!r} is unavailable: {why}")
    return impl
