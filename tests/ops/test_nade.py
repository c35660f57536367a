"""fastgen.ops.nade: every runnable impl against the cumsum reference and the literal loop over
steps (a second oracle), gradients, opcheck, compile, bf16, long sequences at tight tolerance,
odd / non-contiguous / empty inputs, and bad input."""
import pytest
import torch

import fastgen
from fastgen import _ext
from fastgen.ops import nade
from fastgen.reference.nade import nade as reference
from fastgen.reference.nade import nade_loop
from tests.conftest import KERNEL_IMPLS, RUNNABLE_IMPLS, TRITON_DEVICE, assert_close_bf16

# (N, D, H, L): Bernoulli and categorical heads (L = 6 takes the CPU kernel's GEMM head), D = 1,
# H = 1, H beyond a vector with a ragged tail, N not a multiple of the thread count
SHAPES = [(3, 5, 7, 1), (4, 6, 5, 3), (2, 3, 17, 6), (5, 1, 1, 1), (1, 4, 1, 2), (7, 9, 33, 1)]
NAMES = ("logits", "grad_v", "grad_W", "grad_c", "grad_V", "grad_b")


def make(N, D, H, L, dtype=torch.float64, device="cpu", seed=0, levels=2):
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(0, levels, (N, D), generator=g).double() / (levels - 1)
    W = torch.randn(H, D, generator=g, dtype=torch.float64)
    c = torch.randn(H, generator=g, dtype=torch.float64)
    V = torch.randn(D, L, H, generator=g, dtype=torch.float64)
    b = torch.randn(D, L, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (v, W, c, V, b)]


def grads(fn, args, gout):
    y = fn(*args)
    gs = torch.autograd.grad(y, args, gout, allow_unused=True)  # D = 1: the reference never uses v
    return (y,) + tuple(torch.zeros_like(a) if g is None else g for a, g in zip(args, gs))


def assert_all_close(ours, ref, dtype, tol=None):
    tol = tol or (dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5))
    for name, a, r in zip(NAMES, ours, ref):
        assert a.shape == r.shape, f"{name}: shape {tuple(a.shape)} != {tuple(r.shape)}"
        torch.testing.assert_close(a, r, **tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference_and_loop(impl, device, shape, dtype):
    args = make(*shape, dtype=dtype, device=device, levels=4)
    gout = torch.randn(shape[0], shape[1], shape[3], dtype=dtype, device=device)
    ours = grads(nade, args, gout)
    assert ours[0].dtype == dtype
    assert_all_close(ours, grads(reference, args, gout), dtype)
    assert_all_close(ours, grads(nade_loop, args, gout), dtype)


def test_oracles_agree():
    """The two references are written independently; they must agree with each other."""
    args = make(4, 7, 6, 3)
    gout = torch.randn(4, 7, 3, dtype=torch.float64)
    assert_all_close(grads(reference, args, gout), grads(nade_loop, args, gout), torch.float64)


@pytest.mark.skipif(not _ext.AVAILABLE, reason="C++ extension not built")
@pytest.mark.parametrize("levels", [2, 4])
def test_cpp_long_sequence(levels):
    """MNIST length D = 784: the float64 running sum reproduces the reference's cumsum bit for
    bit (a_last), float32 logits and gradients stay at float32 rounding, float64 ones at 1e-10."""
    N, D, H = 5, 784, 24
    args64 = make(N, D, H, 1, levels=levels, seed=3)
    with torch.no_grad():
        args64[1].mul_(0.2)
    gout = torch.randn(N, D, 1, dtype=torch.float64)
    truth = grads(reference, args64, gout)
    with fastgen.use_impl("cpp"):
        assert_all_close(grads(nade, args64, gout), truth, torch.float64)
        args32 = [t.detach().float().requires_grad_() for t in args64]
        ours32 = grads(nade, args32, gout.float())
    ref32 = grads(reference, args32, gout.float())
    for name, a, r, t in zip(NAMES, ours32, ref32, truth):
        err_ours, err_ref = (a.double() - t).abs().max().item(), (r.double() - t).abs().max().item()
        assert err_ours <= 2 * err_ref + 1e-6 * t.abs().max().item(), f"{name}: {err_ours:.3g} vs reference {err_ref:.3g}"
    # inputs that need no gradient take the kernel's other backward (R brought up to date only
    # where a changes and every few steps): the same gradients
    with fastgen.use_impl("cpp"):
        ours_wo_v = torch.autograd.grad(nade(args64[0].detach(), *args64[1:]), args64[1:], gout)
    for name, a, t in zip(NAMES[2:], ours_wo_v, truth[2:]):
        torch.testing.assert_close(a, t, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name} without grad_v: {m}")
    v, W, c = (t.detach() for t in args32[:3])
    _, a_last = torch.ops.fastgen.nade(v, W, c, args32[3].detach(), args32[4].detach())
    contrib = v[:, :-1, None] * W[:, :-1].t()
    cumsum_last = torch.cumsum(torch.cat([c.expand(N, 1, H), contrib], dim=1), dim=1)[:, -1]
    assert torch.equal(a_last.float(), cumsum_last)


@pytest.mark.parametrize("impl", KERNEL_IMPLS, indirect=True)  # ours: the reference's is torch's
def test_gradcheck(impl, device):
    shape = (2, 3, 3, 2) if impl == "triton" else (3, 4, 5, 2)
    args = make(*shape, device=device, levels=3)
    fast = impl == "triton"
    assert torch.autograd.gradcheck(nade, args, eps=1e-6, atol=1e-7, fast_mode=fast)
    wide = make(2, 3, 4, 6, device=device)  # the GEMM head of the CPU kernel
    assert torch.autograd.gradcheck(nade, wide, eps=1e-6, atol=1e-7, fast_mode=True)


def test_non_contiguous(impl, device):
    v, W, c, V, b = make(4, 6, 5, 3, device=device)
    vt = v.detach().t().contiguous().t().requires_grad_()
    Wt = W.detach().t().contiguous().t().requires_grad_()
    Vt = V.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    bt = b.detach().t().contiguous().t().requires_grad_()
    ct = torch.stack([c.detach(), c.detach()], 1)[:, 0].requires_grad_()
    assert not any(t.is_contiguous() for t in (vt, Wt, Vt, bt, ct))
    gout = torch.randn(4, 6, 3, dtype=torch.float64, device=device).transpose(0, 1).contiguous().transpose(0, 1)
    assert_all_close(grads(nade, (vt, Wt, ct, Vt, bt), gout), grads(reference, (v, W, c, V, b), gout), torch.float64)


@pytest.mark.parametrize("shape", [(0, 4, 3, 1), (3, 0, 4, 1), (3, 4, 0, 2), (3, 4, 5, 0)])
def test_empty(impl, device, shape):
    args = make(*shape, device=device)
    y = nade(*args)
    assert y.shape == (shape[0], shape[1], shape[3])
    torch.testing.assert_close(y, reference(*args))
    gs = torch.autograd.grad(y.sum(), args, allow_unused=True)
    ref = torch.autograd.grad(reference(*args).sum(), args, allow_unused=True)
    for name, a, r, t in zip(NAMES[1:], gs, ref, args):
        a = torch.zeros_like(t) if a is None else a
        r = torch.zeros_like(t) if r is None else r
        torch.testing.assert_close(a, r, msg=lambda m: f"{name}: {m}")


def test_extreme_values(impl, device):
    """Saturated units (|a| ~ 1e3) stay finite and match the reference."""
    args = make(3, 6, 9, 2, dtype=torch.float32, device=device)
    with torch.no_grad():
        args[1].mul_(1e3)
        args[2].mul_(1e3)
    gout = torch.randn(3, 6, 2, generator=torch.Generator().manual_seed(1)).to(device)
    ours = grads(nade, args, gout)
    for a in ours:
        assert torch.isfinite(a).all()
    # saturated units must give h exactly 0 or 1 (h (1 - h) = 0: no gradient), else W ~ 1e3 turns
    # an ulp of h into noise in grad_v: ours within twice the float32 reference's own error
    # against float64, plus 1e-5
    ref = grads(reference, args, gout)
    truth = grads(reference, [a.detach().double().requires_grad_() for a in args], gout.double())
    for name, a, r, t in zip(NAMES, ours, ref, truth):
        err_ours, err_ref = (a.double() - t).abs().max().item(), (r.double() - t).abs().max().item()
        assert err_ours <= 2 * err_ref + 1e-5, f"{name}: {err_ours:.3g} vs reference {err_ref:.3g}"


def test_bf16(impl, device):
    args = make(4, 12, 10, 2, device=device)
    truth = reference(*args)
    low = [t.detach().bfloat16().requires_grad_() for t in args]
    ours = nade(*low)
    assert ours.dtype == torch.bfloat16
    ref_bf16 = reference(*low)
    assert_close_bf16(ours, ref_bf16, truth)
    g = torch.randn(truth.shape, generator=torch.Generator().manual_seed(3)).to(device)
    ours_g = torch.autograd.grad(ours, low, g.bfloat16())
    ref_g = torch.autograd.grad(ref_bf16, low, g.bfloat16())
    true_g = torch.autograd.grad(truth, args, g)
    for a, r, t in zip(ours_g, ref_g, true_g):
        assert a.dtype == torch.bfloat16
        assert_close_bf16(a, r, t)


def test_double_backward_raises(impl, device):
    if impl == "reference":
        pytest.skip("the reference supports higher-order gradients")
    args = make(2, 3, 4, 1, device=device)
    y = nade(*args)
    (gW,) = torch.autograd.grad(y.sum(), args[1], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported by fastgen.nade"):
        gW.sum().backward()


def _op_variants():
    out = []
    if _ext.AVAILABLE:
        out.append(("cpp", "cpu", torch.ops.fastgen.nade, torch.ops.fastgen.nade_backward))
    if "triton" in RUNNABLE_IMPLS:
        out.append(("triton", TRITON_DEVICE, torch.ops.fastgen.nade_triton, torch.ops.fastgen.nade_backward_triton))
    return out


@pytest.mark.parametrize("name,dev,op,bwd", _op_variants(), ids=[v[0] for v in _op_variants()])
def test_opcheck(name, dev, op, bwd):
    args = make(3, 4, 5, 2, device=dev)
    torch.library.opcheck(op, tuple(args))
    detached = [t.detach() for t in args]
    logits, a_last = op(*detached)
    v, W, _c, V, _b = detached
    torch.library.opcheck(bwd, (torch.randn_like(logits), v, W, V, a_last, True))
    torch.library.opcheck(bwd, (torch.randn_like(logits), v, W, V, a_last, False))


@pytest.mark.parametrize("impl_name", [i for i in ("cpp", "triton") if i in RUNNABLE_IMPLS])
def test_compile_fullgraph(impl_name):
    dev = TRITON_DEVICE if impl_name == "triton" else "cpu"
    args = make(3, 4, 5, 1, device=dev)

    def f(v, W, c, V, b):
        return nade(v * 0.75, W, c, V, b).sum()

    with fastgen.use_impl(impl_name):
        y = torch.compile(f, fullgraph=True)(*args)
        g = torch.autograd.grad(y, args)
    y_ref = reference(args[0] * 0.75, *args[1:]).sum()
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    for a, r in zip(g, torch.autograd.grad(y_ref, args)):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def test_bad_input(impl, device):
    v, W, c, V, b = (t.detach() for t in make(3, 4, 5, 2, device=device))
    with pytest.raises(ValueError, match=r"v must be \(N, D\)"):
        nade(v[0], W, c, V, b)
    with pytest.raises(ValueError, match=r"W must have shape \(H, D\)"):
        nade(v, W[:, :3], c, V, b)
    with pytest.raises(ValueError, match=r"c must have shape \(H,\)"):
        nade(v, W, c[:4], V, b)
    with pytest.raises(ValueError, match=r"V must have shape \(D, L, H\)"):
        nade(v, W, c, V[:, :, :4], b)
    with pytest.raises(ValueError, match=r"b must have shape \(D, L\)"):
        nade(v, W, c, V, b[:, :1])
    with pytest.raises(TypeError, match="W has dtype"):
        nade(v, W.float(), c, V, b)
    with pytest.raises(TypeError, match="v must be float"):
        nade(v.long(), W, c, V, b)
    with pytest.raises(TypeError, match="b must be a torch.Tensor"):
        nade(v, W, c, V, None)


@pytest.mark.skipif(not _ext.AVAILABLE, reason="extension not built")
def test_compiled_op_checks_its_arguments():
    """A direct torch.ops call with bad input raises a clear error, never crashes."""
    v, W, c, V, b = (t.detach() for t in make(3, 4, 5, 2))
    op = torch.ops.fastgen.nade
    with pytest.raises(RuntimeError, match=r"W must have shape \(H, D\)"):
        op(v, W[:, :3], c, V, b)
    with pytest.raises(RuntimeError, match="c must have shape"):
        op(v, W, c[:4], V, b)
    with pytest.raises(RuntimeError, match="V must have shape"):
        op(v, W, c, V[1:], b)
    with pytest.raises(RuntimeError, match="b has dtype"):
        op(v, W, c, V, b.float())
    logits, a_last = op(v, W, c, V, b)
    with pytest.raises(RuntimeError, match="a_last must be a float64"):
        torch.ops.fastgen.nade_backward(logits, v, W, V, a_last.float(), True)
    with pytest.raises(RuntimeError, match="grad_logits must have shape"):
        torch.ops.fastgen.nade_backward(logits[:, :2], v, W, V, a_last, True)


def test_module(impl, device):
    layer = fastgen.nn.NADELayer(5, 6, num_logits=2, generator=torch.Generator().manual_seed(0)).double().to(device)
    v = torch.randint(0, 2, (3, 5), device=device).double()
    y = layer(v)
    torch.testing.assert_close(y, reference(v, layer.W, layer.c, layer.V, layer.b), rtol=1e-10, atol=1e-12)
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        fastgen.nn.NADELayer(5, 0)


@pytest.mark.skipif(not _ext.AVAILABLE, reason="C++ extension not built")
@pytest.mark.parametrize("L", [1, 5])
def test_cpp_examples_split_over_threads(L):
    """A problem big enough for one chunk per thread (small ones run in one): the forward splits
    the examples; the backward splits the hidden units (L = 1, the fused head) or the examples
    (L = 5, the GEMM head, per-chunk gradient buffers summed in chunk order). The same result on
    every call."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        args = make(9, 200, 600, L, levels=2, seed=5)  # 9 * 200 * 600 * (1 + L) >= 2 * 2^20
        with torch.no_grad():
            args[1].mul_(0.1)
        gout = torch.randn(9, 200, L, dtype=torch.float64)
        with fastgen.use_impl("cpp"):
            ours = grads(nade, args, gout)
            again = grads(nade, args, gout)
        assert_all_close(ours, grads(reference, args, gout), torch.float64)
        for a, b in zip(ours, again):
            assert torch.equal(a, b)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.skipif(not _ext.AVAILABLE, reason="C++ extension not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grad_v", [True, False])
def test_cpp_same_on_one_and_two_threads(dtype, grad_v):
    """The fused head's backward splits the hidden units among threads (here unevenly: 600 units
    are 37.5 blocks of 16): each unit's gradients are summed over the examples in the same order
    on any thread count, so logits, grad_W, grad_c, grad_V and grad_b are identical on one and
    two threads; grad_v, a sum over units, is summed per thread, equal to rounding."""
    args = make(9, 200, 600, 2, dtype=dtype, levels=2, seed=6)
    with torch.no_grad():
        args[1].mul_(0.1)
    if not grad_v:
        args[0] = args[0].detach()
    names, wrt = (NAMES, args) if grad_v else (NAMES[:1] + NAMES[2:], args[1:])
    gout = torch.randn(9, 200, 2, dtype=dtype)

    def run(fn):
        y = fn(*args)
        return (y,) + torch.autograd.grad(y, wrt, gout)

    previous, results = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with fastgen.use_impl("cpp"):
                results.append(run(nade))
    finally:
        torch.set_num_threads(previous)
    for name, one, two in zip(names, *results):
        if name == "grad_v":
            torch.testing.assert_close(one, two, msg=lambda m: f"grad_v: {m}")
        else:
            assert torch.equal(one, two), name
    if dtype == torch.float64:
        for name, ours, ref in zip(names, results[1], run(reference)):
            torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("L", [1, 6])
def test_without_grad_v(impl, device, L):
    """Inputs that need no gradient (a model's pixels): the backward skips v's gradient and the
    others are unchanged."""
    v, W, c, V, b = make(5, 9, 7, L, device=device, levels=3)
    v = v.detach()
    gout = torch.randn(5, 9, L, dtype=torch.float64, device=device)
    ours = torch.autograd.grad(nade(v, W, c, V, b), (W, c, V, b), gout)
    ref = torch.autograd.grad(reference(v, W, c, V, b), (W, c, V, b), gout)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)
