"""The shape of one fastgen op, declared once (OpSpec), and the machinery every op goes through.

An op `<name>` has up to four registered operators:
    fastgen::<name>                   the compiled op (schema in csrc/<op>/<op>.cpp; CPU and CUDA
                                      kernels behind the dispatcher), when the extension is built
    fastgen::<name>_backward          its backward op (if the op has one)
    fastgen::<name>_triton            the Triton sibling: a Python custom_op with the same schema,
    fastgen::<name>_backward_triton   launching fastgen.kernels.<module>.<name>_forward / _backward
Each op module declares one OpSpec: the reference, the schemas of the Triton siblings, the fake
kernels, the autograd wiring (shared by both siblings) and the GPU default. The spec registers
the Triton siblings, the fake kernels and the autograd, and `spec.dispatch(device, *args)` is
the one place where an implementation is chosen (fastgen.use_impl / FASTGEN_IMPL, through
fastgen._impl.select) and run.

Autograd policy: a backward op has no derivative of its own. Under create_graph=True it runs as
a node whose backward raises ("double backward is not supported by fastgen.<name>"), so a second
derivative is an error, never silent zeros. An op without a backward op (its backward scales a
gradient the forward computed) refuses create_graph=True itself, with the same error.
"""
import functools
import importlib

import torch

from fastgen import _ext, _impl

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
GPU_DEFAULTS = ("cuda", "triton", "vendor")
SPECS = {}  # name -> OpSpec, every declared op


def check_float(op, name, t, min_dim=0):
    """t must be a float32/float64/bfloat16 tensor of at least `min_dim` dims."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastgen.{op}: {name} must be a torch.Tensor; got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"fastgen.{op}: {name} must be float32, float64 or bfloat16; got {t.dtype}")
    if t.dim() < min_dim:
        raise ValueError(f"fastgen.{op}: {name} must have at least {min_dim} dimension(s); "
                         f"got shape {tuple(t.shape)}")
    return t


def check_like(op, ref_name, ref, name, t, same_shape=True):
    """t must match ref in dtype and device (and shape unless same_shape=False)."""
    check_float(op, name, t)
    if t.dtype != ref.dtype:
        raise TypeError(f"fastgen.{op}: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")
    if t.device != ref.device:
        raise ValueError(f"fastgen.{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")
    if same_shape and t.shape != ref.shape:
        raise ValueError(f"fastgen.{op}: {name} has shape {tuple(t.shape)} but {ref_name} has "
                         f"{tuple(ref.shape)}")
    return t


# --- autograd policy ----------------------------------------------------------------------
def double_backward_error(op, why):
    return RuntimeError(f"double backward is not supported by fastgen.{op} ({why}); use "
                        "fastgen.use_impl('reference') for it")


class _FirstOrderOnly(torch.autograd.Function):
    """Runs an op's backward op as a node whose own backward raises: the backward ops have no
    derivative of their own, so without this a double backward would silently give zeros."""

    @staticmethod
    def forward(ctx, op, backward_op, *args):
        ctx.op = op
        return backward_op(*args)

    @staticmethod
    def backward(ctx, *grads):
        raise double_backward_error(ctx.op, "its gradient was taken with create_graph=True and then "
                                            "differentiated")


def call_backward(op, backward_op, *args):
    """backward_op(*args) inside an autograd backward. Under create_graph=True (grad mode on in
    the backward) the result is wired so that differentiating it raises a clear error; a plain
    backward calls the op directly and pays nothing."""
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _FirstOrderOnly.apply(op, backward_op, *args)
    return backward_op(*args)


def _refuse_create_graph(op, backward):
    """The backward of an op without a backward op: it scales values the forward computed, which
    are constants to autograd, so their derivative would be lost under create_graph=True."""
    def guarded(ctx, *grads):
        if torch.is_grad_enabled():
            raise double_backward_error(op, "its gradient was taken with create_graph=True, but the "
                                            "fused kernels save the gradient as a constant")
        return backward(ctx, *grads)

    return guarded


# --- the spec -----------------------------------------------------------------------------
@functools.cache
def _launcher(module, name):
    return getattr(importlib.import_module(f"fastgen.kernels.{module}"), name)


def _triton_sibling(op_name, module, launcher, schema):
    """fastgen::<op_name> as a Python custom_op running fastgen.kernels.<module>.<launcher>
    (imported on first call: importing triton is slow, and only the Triton impl needs it)."""
    def launch(*args):
        return _launcher(module, launcher)(*args)

    launch.__name__ = launch.__qualname__ = op_name
    return torch.library.custom_op(f"fastgen::{op_name}", launch, mutates_args=(), schema=schema)


def _default_call(output):
    if output is None:
        return lambda op, *args: op(*args)
    return lambda op, *args: op(*args)[output]


class OpSpec:
    """One op, declared once; constructing it registers the Triton siblings, the fake kernels
    and the autograd of both siblings.

    name             the op's stem: fastgen.<name> in messages, fastgen::<name>[_backward][_triton]
    reference        the plain-PyTorch implementation, called with the public op's arguments
    schema           the op's schema without its name, as in the C++ m.def (the Triton sibling's)
    fake             fake kernel of the forward op (shapes only: torch.compile traces with it)
    setup_context    register_autograd's setup_context, shared by both siblings
    make_backward    backward_op -> the autograd backward. backward_op(*args) runs the sibling's
                     own backward op under the first-order-only policy; None when the op has no
                     backward op (backward_schema None), whose backward then refuses
                     create_graph=True
    backward_schema  schema of the backward op, or None
    fake_backward    fake kernel of the backward op
    kernels          the module of fastgen.kernels with <name>_forward / <name>_backward
                     (default: name)
    compiled_autograd  False: the compiled op's autograd is registered in C++ (only the Triton
                     sibling's is wired here)
    gpu_default      what "auto" runs on CUDA tensors: "cuda", "triton" or "vendor" (PyTorch's own
                     cuBLAS/cuDNN call, the `vendor` function)
    vendor           the vendor implementation, called with the public op's arguments
    call_kernel      (op, *args) -> result: runs a kernel op (compiled or Triton) on the public
                     op's arguments; default op(*args)[output] (op(*args) if output is None)
    """

    def __init__(self, name, *, reference, schema, fake, setup_context, make_backward,
                 backward_schema=None, fake_backward=None, kernels=None, compiled_autograd=True,
                 gpu_default="cuda", vendor=None, call_kernel=None, output=0):
        if name in SPECS:
            raise RuntimeError(f"fastgen op {name!r} is declared twice")
        if gpu_default not in GPU_DEFAULTS or (gpu_default == "vendor") != (vendor is not None):
            raise ValueError(f"{name}: gpu_default must be one of {GPU_DEFAULTS}, 'vendor' with a vendor "
                             f"function; got {gpu_default!r}")
        if (backward_schema is None) != (fake_backward is None):
            raise ValueError(f"{name}: a backward op needs both backward_schema and fake_backward")
        self.name, self.reference, self.vendor, self.gpu_default = name, reference, vendor, gpu_default
        self.schema, self.backward_schema = schema, backward_schema
        self.call_kernel = call_kernel or _default_call(output)
        module = kernels or name
        self.triton = _triton_sibling(f"{name}_triton", module, f"{name}_forward", schema)
        if backward_schema is not None:
            _triton_sibling(f"{name}_backward_triton", module, f"{name}_backward", backward_schema)
        self.compiled = getattr(torch.ops.fastgen, name).default if _ext.AVAILABLE else None
        self._ops = {"triton": getattr(torch.ops.fastgen, f"{name}_triton").default}
        if self.compiled is not None:
            self._ops["cpp"] = self._ops["cuda"] = self.compiled
        for sibling in self.siblings():
            self._register(sibling, fake, fake_backward, setup_context, make_backward, compiled_autograd)
        SPECS[name] = self

    def siblings(self):
        """The registered forward ops: <name>_triton, and <name> when the extension is built."""
        return [f"{self.name}_triton"] + ([self.name] if self.compiled is not None else [])

    def backward_op_name(self, sibling):
        return sibling.replace(self.name, f"{self.name}_backward", 1)

    def _register(self, sibling, fake, fake_backward, setup_context, make_backward, compiled_autograd):
        torch.library.register_fake(f"fastgen::{sibling}")(fake)
        backward_op = None
        if self.backward_schema is not None:
            backward_name = self.backward_op_name(sibling)
            torch.library.register_fake(f"fastgen::{backward_name}")(fake_backward)
            backward_op = getattr(torch.ops.fastgen, backward_name).default
        if sibling == self.name and not compiled_autograd:
            return
        if backward_op is None:
            backward = _refuse_create_graph(self.name, make_backward(None))
        else:
            backward = make_backward(functools.partial(call_backward, self.name, backward_op))
        torch.library.register_autograd(f"fastgen::{sibling}", backward, setup_context=setup_context)

    def select(self, device):
        """The implementation that runs this op on tensors of `device` (see fastgen._impl)."""
        return _impl.select(self.name, device, self.gpu_default)

    def dispatch(self, device, *args):
        """Run the op on the public op's (checked) arguments, whose tensors are on `device`,
        with the implementation chosen by fastgen.use_impl / FASTGEN_IMPL."""
        impl = _impl.select(self.name, device, self.gpu_default)
        if impl == "reference":
            return self.reference(*args)
        if impl == "vendor":
            return self.vendor(*args)
        return self.call_kernel(self._ops[impl], *args)
