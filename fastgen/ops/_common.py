"""Input checks and autograd wiring shared by the fastgen ops."""
import torch

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


def register_autograd_pair(op_names, setup_context, make_backward):
    """Wire autograd identically for the compiled op and its Triton sibling.

    op_names: {forward op name: backward op callable}; make_backward(backward_op) returns the
    backward function for register_autograd."""
    for name, backward_op in op_names.items():
        torch.library.register_autograd(name, make_backward(backward_op), setup_context=setup_context)
