"""Input checks and autograd wiring shared by the fastgen ops."""
import torch

from fastgen import _ext

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


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


def register_siblings(stem, fake, fake_backward, setup_context, make_backward, compiled_autograd=True):
    """Wire an op's two siblings alike: fastgen::<stem>_triton (a Python custom_op) and, when the
    extension is built, the compiled fastgen::<stem>. Both get the shared fake kernels (forward
    and backward op) and the same autograd, whose backward calls the sibling's own backward op
    (fastgen::<stem>_backward[_triton]). compiled_autograd=False: the compiled op registers its
    autograd in C++ already."""
    siblings = [f"{stem}_triton"] + ([stem] if _ext.AVAILABLE else [])
    for name in siblings:
        backward_name = name.replace(stem, f"{stem}_backward", 1)
        torch.library.register_fake(f"fastgen::{name}")(fake)
        torch.library.register_fake(f"fastgen::{backward_name}")(fake_backward)
        if name != stem or compiled_autograd:
            backward_op = getattr(torch.ops.fastgen, backward_name)
            torch.library.register_autograd(f"fastgen::{name}", make_backward(backward_op),
                                            setup_context=setup_context)


class _FirstOrderOnly(torch.autograd.Function):
    """Runs an op's backward op as a node whose own backward raises: the backward ops have no
    derivative of their own, so without this a double backward would silently give zeros."""

    @staticmethod
    def forward(ctx, op, backward_op, *args):
        ctx.op = op
        return backward_op(*args)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(f"double backward is not supported by fastgen.{ctx.op} (its gradient was "
                           "taken with create_graph=True and then differentiated); use "
                           "fastgen.use_impl('reference') for it")


def call_backward(op, backward_op, *args):
    """backward_op(*args) inside an autograd backward. Under create_graph=True (grad mode on in
    the backward) the result is wired so that differentiating it raises a clear error; a plain
    backward calls the op directly and pays nothing."""
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _FirstOrderOnly.apply(op, backward_op, *args)
    return backward_op(*args)
