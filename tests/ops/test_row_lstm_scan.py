"""fastgen.ops.row_lstm_scan: every runnable impl against the loop reference and against
torch.nn.LSTM (the oracle where the scan reduces to it), gradients, opcheck, compile, bf16,
odd / non-contiguous / empty / extreme inputs, and bad input."""
import pytest
import torch

import fastgen
from fastgen import _ext
from fastgen.ops import row_lstm_scan
from fastgen.reference.row_lstm_scan import row_lstm_scan as reference
from tests.conftest import KERNEL_IMPLS, RUNNABLE_IMPLS, TRITON_DEVICE, assert_close_bf16

SHAPES = [(2, 3, 4, 5), (1, 5, 3, 7), (3, 2, 1, 1), (2, 4, 5, 16)]  # (B, h, H, W); odd ones too


def make(B, h, H, W, dtype=torch.float64, device="cpu", scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4 * h, H, W, generator=g, dtype=torch.float64) * scale
    w = torch.randn(4 * h, h, 3, generator=g, dtype=torch.float64) * 0.4
    b = torch.randn(4 * h, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (x, w, b)]


def grads(fn, x, w, b, gout):
    y = fn(x, w, b)
    return (y,) + torch.autograd.grad(y, (x, w, b), gout)


def assert_grads_close(ours, ref, dtype, float64_tol=dict(rtol=1e-10, atol=1e-12)):
    tol = float64_tol if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for name, a, r in zip(("hidden", "grad_input", "grad_weight", "grad_bias"), ours, ref):
        torch.testing.assert_close(a, r, **tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference(impl, device, shape, dtype):
    x, w, b = make(*shape, dtype=dtype, device=device)
    gout = torch.randn(shape, dtype=dtype, device=device)
    ours = grads(row_lstm_scan, x, w, b, gout)
    assert_grads_close(ours, grads(reference, x, w, b, gout), dtype)


@pytest.mark.skipif(not _ext.AVAILABLE, reason="C++ extension not built")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpp_wide_rows(dtype):
    """The CPU kernel on rows wider than a vector (ragged tail), h a multiple of the vector width
    and a batch that splits unevenly over threads: its row GEMMs, its plane-by-plane copies, the
    bias gradient summed in its cell math and the weight gradient that skips row 0."""
    shape = (5, 16, 6, 17)
    x, w, b = make(*shape, dtype=dtype)
    gout = torch.randn(shape, dtype=dtype)
    with fastgen.use_impl("cpp"):
        ours = grads(row_lstm_scan, x, w, b, gout)
    assert_grads_close(ours, grads(reference, x, w, b, gout), dtype, dict(rtol=1e-10, atol=1e-11))


def test_oracle_nn_lstm(impl, device):
    """Centre tap only: each column is an independent torch.nn.LSTM over the rows whose input
    projection is the identity on input_gates (weight_ih = I) and whose weight_hh is the tap."""
    B, h, H, W = 2, 3, 6, 4
    x, w, b = make(B, h, H, W, device=device)
    w_centre = torch.zeros_like(w)
    w_centre[:, :, 1] = w[:, :, 1]
    ours = row_lstm_scan(x, w_centre, b)
    lstm = torch.nn.LSTM(4 * h, h, dtype=torch.float64).to(device)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.eye(4 * h))
        lstm.weight_hh_l0.copy_(w[:, :, 1])
        lstm.bias_ih_l0.copy_(b)
        lstm.bias_hh_l0.zero_()
    seq = x.permute(2, 0, 3, 1).reshape(H, B * W, 4 * h)  # (rows, batch x columns, 4h)
    out, _ = lstm(seq)
    oracle = out.reshape(H, B, W, h).permute(1, 3, 0, 2)
    torch.testing.assert_close(ours, oracle, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(oracle, x, g)[0],
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", KERNEL_IMPLS, indirect=True)  # ours: the reference's is torch's
def test_gradcheck(impl, device):
    # the Triton interpreter costs ~0.1 s a call: a smaller case and gradcheck's fast mode there
    x, w, b = make(1, 1, 2, 3, device=device) if impl == "triton" else make(1, 2, 3, 3, device=device)
    fast = impl == "triton"
    assert torch.autograd.gradcheck(row_lstm_scan, (x, w, b), eps=1e-6, atol=1e-7, fast_mode=fast)
    assert torch.autograd.gradcheck(lambda x, w: row_lstm_scan(x, w), (x, w), eps=1e-6, atol=1e-7,
                                    fast_mode=fast)


def test_non_contiguous(impl, device):
    x, w, b = make(2, 3, 4, 5, device=device)
    xt = x.detach().transpose(2, 3).contiguous().transpose(2, 3).requires_grad_()  # strided view
    assert not xt.is_contiguous()
    wt = w.detach().permute(2, 0, 1).contiguous().permute(1, 2, 0).requires_grad_()
    assert not wt.is_contiguous()
    gout = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=device)
    ours = grads(row_lstm_scan, xt, wt, b, gout)
    ref = grads(reference, x, w, b, gout)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


EMPTY = [(0, 2, 3, 4), (2, 2, 0, 4), (2, 2, 3, 0)]


@pytest.mark.parametrize("shape", EMPTY)
def test_empty(impl, device, shape):
    x, w, b = make(*shape, device=device)
    y = row_lstm_scan(x, w, b)
    assert y.shape == shape and y.dtype == x.dtype and y.device == x.device


@pytest.mark.parametrize("impl", KERNEL_IMPLS, indirect=True)
@pytest.mark.parametrize("shape", EMPTY)
def test_empty_gradients_are_zeros(impl, device, shape):
    """Our ops stay differentiable at size 0: every input gets an all-zero gradient of its own
    shape (no batch, row or column: nothing reaches the weight or the bias). (The reference
    returns fresh zeros for an empty input, without a graph.)"""
    x, w, b = make(*shape, device=device)
    y = row_lstm_scan(x, w, b)
    assert y.requires_grad
    for name, g, t in zip(("input_gates", "weight_ss", "bias"), torch.autograd.grad(y.sum(), (x, w, b)), (x, w, b)):
        assert g.shape == t.shape and g.dtype == t.dtype, name
        assert torch.equal(g, torch.zeros_like(t)), name


def test_extreme_values(impl, device):
    """Saturated gates (|z| ~ 1e4) stay finite and match the reference; so do tiny ones."""
    for scale in (1e4, 1e-30):
        x, w, b = make(2, 3, 4, 5, dtype=torch.float32, device=device, scale=scale)
        gout = torch.randn(2, 3, 4, 5, device=device)
        ours = grads(row_lstm_scan, x, w, b, gout)
        ref = grads(reference, x, w, b, gout)
        for a, r in zip(ours, ref):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_bf16(impl, device):
    x, w, b = make(2, 4, 5, 6, device=device)
    truth = reference(x, w, b)
    xb, wb, bb = (t.detach().bfloat16() for t in (x, w, b))
    ref_bf16 = reference(xb, wb, bb)
    ours = row_lstm_scan(xb, wb, bb)
    assert ours.dtype == torch.bfloat16
    assert_close_bf16(ours, ref_bf16, truth)
    xb.requires_grad_()
    g = torch.randn_like(truth)
    gx = torch.autograd.grad(row_lstm_scan(xb, wb, bb), xb, g.bfloat16())[0]
    xr = xb.detach().requires_grad_()
    gx_ref = torch.autograd.grad(reference(xr, wb, bb), xr, g.bfloat16())[0]
    gx_true = torch.autograd.grad(truth, x, g)[0]
    assert_close_bf16(gx, gx_ref, gx_true)


def _op_variants():
    out = []
    if _ext.AVAILABLE:
        out.append(("cpp", "cpu", torch.ops.fastgen.row_lstm_scan, torch.ops.fastgen.row_lstm_scan_backward))
    if "triton" in RUNNABLE_IMPLS:
        out.append(("triton", TRITON_DEVICE, torch.ops.fastgen.row_lstm_scan_triton,
                    torch.ops.fastgen.row_lstm_scan_backward_triton))
    return out


@pytest.mark.parametrize("name,dev,op,bwd", _op_variants(), ids=[v[0] for v in _op_variants()])
def test_opcheck(name, dev, op, bwd):
    x, w, b = make(2, 2, 3, 4, device=dev)
    torch.library.opcheck(op, (x, w, b))
    torch.library.opcheck(op, (x, w, None))
    hidden, cell, gates = op(x.detach(), w.detach(), b.detach())
    torch.library.opcheck(bwd, (torch.randn_like(hidden), w.detach(), hidden, cell, gates, True))


@pytest.mark.parametrize("impl_name", [i for i in ("cpp", "triton") if i in RUNNABLE_IMPLS])
def test_compile_fullgraph(impl_name):
    dev = TRITON_DEVICE if impl_name == "triton" else "cpu"
    x, w, b = make(2, 2, 3, 4, device=dev)

    def f(x, w, b):
        return row_lstm_scan(x * 2.0, w, b).sum()

    with fastgen.use_impl(impl_name):
        compiled = torch.compile(f, fullgraph=True)
        y = compiled(x, w, b)
        g = torch.autograd.grad(y, (x, w, b))
    y_ref = reference(x * 2.0, w, b).sum()
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    g_ref = torch.autograd.grad(y_ref, (x, w, b))
    for a, r in zip(g, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def test_bad_input(impl, device):
    x, w, b = (t.detach() for t in make(2, 3, 4, 5, device=device))
    with pytest.raises(ValueError, match="input_gates.*4h channels"):
        row_lstm_scan(x[:, :11], w, b)
    with pytest.raises(ValueError, match="input_gates"):
        row_lstm_scan(x[0], w, b)
    with pytest.raises(ValueError, match=r"weight_ss must have shape \(4h, h, 3\)"):
        row_lstm_scan(x, w[:, :, :2], b)
    with pytest.raises(ValueError, match="weight_ss"):
        row_lstm_scan(x, w[:8], b)
    with pytest.raises(TypeError, match="weight_ss has dtype"):
        row_lstm_scan(x, w.float(), b)
    with pytest.raises(TypeError, match="bias has dtype"):
        row_lstm_scan(x, w, b.float())
    with pytest.raises(ValueError, match="bias must have shape"):
        row_lstm_scan(x, w, b[:5])
    with pytest.raises(TypeError, match="input_gates must be float"):
        row_lstm_scan(x.long(), w, b)


@pytest.mark.skipif(not _ext.AVAILABLE, reason="extension not built")
def test_compiled_op_checks_its_arguments():
    """A direct torch.ops call with bad input raises a clear error, never crashes."""
    x, w, b = (t.detach() for t in make(2, 3, 4, 5))
    op = torch.ops.fastgen.row_lstm_scan
    with pytest.raises(RuntimeError, match="4h channels"):
        op(x[:, :11], w, b)
    with pytest.raises(RuntimeError, match="weight_ss must have shape"):
        op(x, w[:, :, :2], b)
    with pytest.raises(RuntimeError, match="weight_ss has dtype"):
        op(x, w.float(), b)
    with pytest.raises(RuntimeError, match="bias must have shape"):
        op(x, w, b[:5])
    hidden, cell, gates = op(x, w, b)
    with pytest.raises(RuntimeError, match="gates must have shape"):
        torch.ops.fastgen.row_lstm_scan_backward(hidden, w, hidden, cell, gates[:, :4], True)
