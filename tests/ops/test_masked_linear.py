"""fastgen.ops.masked_linear / fastgen.nn.MaskedLinear: every runnable impl against the
reference and against F.linear on the masked weight (an oracle from PyTorch itself)."""
import pytest
import torch
import torch.nn.functional as F

import fastgen
from fastgen import _ext
from fastgen.nn import MaskedLinear
from fastgen.ops import mask_layout, masked_linear
from fastgen.reference.masked_linear import masked_linear as reference
from tests.conftest import FLOAT_DTYPES, KERNEL_IMPLS, assert_close_bf16

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}
# (x shape, out_features): tiny, odd, 3-D, empty batch, no inputs, no outputs
CASES = [((1, 1), 1), ((7, 33), 19), ((3, 5, 17), 11), ((0, 8), 5), ((4, 0), 6), ((4, 5), 0)]


def staircase_mask(out_f, in_f, seed=0):
    """A degree-sorted MADE mask: unit o of degree m_o sees inputs 1..m_o."""
    g = torch.Generator().manual_seed(seed)
    deg = torch.randint(0, max(in_f, 1), (out_f,), generator=g).sort().values
    return deg[:, None] > torch.arange(in_f)[None, :]


def _inputs(x_shape, out_f, dtype, device="cpu", seed=0, requires_grad=False, mask=None):
    g = torch.Generator().manual_seed(seed)
    in_f = x_shape[-1]
    x = torch.randn(x_shape, generator=g, dtype=torch.float64)
    w = torch.randn(out_f, in_f, generator=g, dtype=torch.float64)
    b = torch.randn(out_f, generator=g, dtype=torch.float64)
    m = staircase_mask(out_f, in_f, seed) if mask is None else mask
    x, w, b = (t.to(dtype=dtype, device=device).requires_grad_(requires_grad) for t in (x, w, b))
    return x, w, m.to(device), b


def _layouts(m):
    # the derived one (layout=None), a fine-grained one (many blocks) and the default
    return [None, mask_layout(m, tile=4, overhead=0), mask_layout(m)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("x_shape,out_f", CASES)
def test_forward_matches_reference_and_oracle(impl, device, x_shape, out_f, dtype):
    x, w, m, b = _inputs(x_shape, out_f, dtype, device)
    oracle = F.linear(x, w * m.to(dtype), b)
    for layout in _layouts(m):
        for bias in (b, None):
            y = masked_linear(x, w, m, bias, layout=layout)
            assert y.shape == x.shape[:-1] + (out_f,) and y.dtype == dtype
            torch.testing.assert_close(y, reference(x, w, m, bias), **TOL[dtype])
            torch.testing.assert_close(y, oracle if bias is not None else oracle - b, **TOL[dtype])


@pytest.mark.parametrize("x_shape,out_f", [((7, 33), 19), ((2, 3, 9), 12), ((0, 5), 4), ((3, 6), 0)])
def test_gradients_match_reference_and_masked_grads_are_zero(impl, device, x_shape, out_f):
    x, w, m, b = _inputs(x_shape, out_f, torch.float64, device, requires_grad=True)
    gy = torch.randn(x_shape[:-1] + (out_f,), dtype=torch.float64, device=device)
    ref = torch.autograd.grad((reference(x, w, m, b) * gy).sum(), (x, w, b))
    for layout in _layouts(m):
        ours = torch.autograd.grad((masked_linear(x, w, m, b, layout=layout) * gy).sum(), (x, w, b))
        for a, r in zip(ours, ref):
            torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
        assert torch.all(ours[1][~m] == 0)   # exactly zero, not small
    # oracle: autograd through F.linear on the masked weight
    wm = w * m.double()
    oracle = torch.autograd.grad((F.linear(x, wm, b) * gy).sum(), (x, w, b))
    for a, o in zip(ours, oracle):
        torch.testing.assert_close(a, o, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", KERNEL_IMPLS, indirect=True)  # ours: the reference's is torch's
def test_gradcheck_float64(impl, device):
    x, w, m, b = _inputs((3, 7), 5, torch.float64, device, requires_grad=True)
    lay = mask_layout(m, tile=2, overhead=0)
    assert torch.autograd.gradcheck(lambda a, c, d: masked_linear(a, c, m, d, layout=lay), (x, w, b))
    assert torch.autograd.gradcheck(lambda a, c: masked_linear(a, c, m), (x, w))


def test_weight_never_mutated_and_masked_inf_contributes_zero(impl, device):
    x, w, m, b = _inputs((5, 9), 7, torch.float32, device, requires_grad=False)
    w = w.clone()
    w[~m] = float("inf")
    w[0, -1] = float("nan") if not m[0, -1] else w[0, -1]
    before = w.clone()
    y = masked_linear(x, w, m, b)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, F.linear(x, torch.where(m, w, 0.0), b))
    assert torch.equal(w.nan_to_num(), before.nan_to_num())
    big = _inputs((4, 6), 3, torch.float32, device, seed=3)
    xb = big[0] * 1e18
    torch.testing.assert_close(masked_linear(xb, big[1], big[2], big[3]), reference(xb, big[1], big[2], big[3]),
                               rtol=1e-5, atol=1e13)


def test_non_contiguous_inputs(impl, device):
    x, w, m, b = _inputs((9, 6), 8, torch.float32, device, requires_grad=True)
    xt = x.detach().t().contiguous().t().requires_grad_(True)      # column-major copy
    wt = w.detach()[:, ::1].t().contiguous().t().requires_grad_(True)
    xs = torch.randn(9, 12, device=device)[:, ::2].requires_grad_(True)
    assert not xt.is_contiguous() and not wt.is_contiguous() and not xs.is_contiguous()
    for xi in (xt, xs):
        y = masked_linear(xi, wt, m, b)
        torch.testing.assert_close(y, reference(xi, wt, m, b))
        g = torch.autograd.grad(y.square().sum(), (xi, wt))
        g_ref = torch.autograd.grad(reference(xi, wt, m, b).square().sum(), (xi, wt))
        for a, r in zip(g, g_ref):
            torch.testing.assert_close(a, r)


def test_bf16_error_at_most_twice_reference(impl, device):
    x, w, m, b = _inputs((16, 65), 33, torch.bfloat16, device)
    y = masked_linear(x, w, m, b)
    truth = reference(x.double(), w.double(), m, b.double())
    assert y.dtype == torch.bfloat16
    assert_close_bf16(y, reference(x, w, m, b), truth)


def _op_variants():
    ops = [torch.ops.fastgen.masked_linear_triton] if fastgen._impl.triton_available("cpu") else []
    if _ext.AVAILABLE:
        ops.append(torch.ops.fastgen.masked_linear)
    return ops


@pytest.mark.parametrize("op", _op_variants(), ids=lambda o: str(o))
def test_opcheck(op):
    x, w, m, b = _inputs((5, 9), 7, torch.float64, requires_grad=True)
    lay = mask_layout(m, tile=2, overhead=0)
    torch.library.opcheck(op, (x, w, m, b, lay.row_blocks, lay.col_blocks))
    torch.library.opcheck(op, (x, w, m, None, lay.row_blocks, lay.col_blocks))


@pytest.mark.skipif(not _ext.AVAILABLE, reason="compiled extension not built")
def test_compile_fullgraph_module_matches_eager():
    torch._dynamo.reset()
    layer = MaskedLinear(9, 7, staircase_mask(7, 9)).double()
    x = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    with fastgen.use_impl("cpp"):
        compiled = torch.compile(layer, fullgraph=True)
        y = compiled(x)
        y.square().sum().backward()
        gx, gw = x.grad.clone(), layer.weight.grad.clone()
        x.grad = layer.weight.grad = None
        layer(x).square().sum().backward()
    torch.testing.assert_close(y, layer(x))
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw, layer.weight.grad)
    assert torch.all(gw[~layer.mask] == 0)


def test_module_is_nn_linear_with_full_mask_and_zero_grads_when_masked(impl, device):
    lin = torch.nn.Linear(6, 4).to(device)
    ml = MaskedLinear(6, 4, torch.ones(4, 6, dtype=torch.bool)).to(device)
    ml.load_state_dict({**lin.state_dict(), "mask": ml.mask})
    x = torch.randn(3, 6, device=device)
    torch.testing.assert_close(ml(x), lin(x))
    ml.set_mask(staircase_mask(4, 6).float())
    ml(x).sum().backward()
    assert torch.all(ml.weight.grad[~ml.mask] == 0)
    assert ml.mask.any() and not ml.mask.all()  # both kinds of entry are there to be tested
    assert torch.all(ml.weight.grad[ml.mask] != 0)


def test_layout_covers_mask_and_skips_zero_blocks():
    m = staircase_mask(300, 200, seed=1)
    lay = mask_layout(m, tile=16, overhead=0)
    covered = torch.zeros_like(m)
    for r0, r1, c0, c1, d0, d1 in lay.row_blocks.tolist():
        covered[r0:r1, c0:c1] = True
    assert not (m & ~covered).any()                       # no non-zero left out
    assert covered.sum() < 0.6 * m.numel()                  # about the density (1/2), not 1
    covered_t = torch.zeros_like(m.t())
    for c0, c1, r0, r1, d0, d1 in lay.col_blocks.tolist():
        covered_t[c0:c1, r0:r1] = True
    assert not (m.t() & ~covered_t).any()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kind", ["triangle", "staircase"])
def test_all_ones_ranges_are_exact(impl, device, kind, dtype):
    """FVSBN's triangle and a MADE staircase: their layouts have all-ones ranges (read in place
    by the CPU kernel, the ragged rest packed), and the results equal the reference."""
    m = torch.ones(70, 70, dtype=torch.bool).tril(-1) if kind == "triangle" else staircase_mask(90, 70)
    lay = mask_layout(m, tile=16, overhead=0)
    for blocks, mm in ((lay.row_blocks, m), (lay.col_blocks, m.t())):
        ranges = [(a0, a1, d0, d1) for a0, a1, _, _, d0, d1 in blocks.tolist() if d1 > d0]
        assert ranges and all(mm[a0:a1, d0:d1].all() for a0, a1, d0, d1 in ranges)
        assert any(d0 > b0 or d1 < b1 for _, _, b0, b1, d0, d1 in blocks.tolist() if d1 > d0)  # ragged parts too
    x, w, _, b = _inputs((5, 70), m.shape[0], dtype, device, requires_grad=True, mask=m)
    m = m.to(device)
    gy = torch.randn(5, m.shape[0], dtype=dtype, device=device)
    y = masked_linear(x, w, m, b, layout=lay)
    g = torch.autograd.grad((y * gy).sum(), (x, w, b))
    y_ref = reference(x, w, m, b)
    g_ref = torch.autograd.grad((y_ref * gy).sum(), (x, w, b))
    if dtype == torch.bfloat16:
        xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
        y_true = reference(xd, wd, m, bd)
        g_true = torch.autograd.grad((y_true * gy.double()).sum(), (xd, wd, bd))
        for ours, ref, true in zip((y,) + g, (y_ref,) + g_ref, (y_true,) + g_true):
            assert_close_bf16(ours, ref, true)
    else:
        tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(y, y_ref, **tol)
        for a, r in zip(g, g_ref):
            torch.testing.assert_close(a, r, **tol)
    assert torch.all(g[1][~m] == 0)


def test_layout_of_another_mask_is_refused_a_covering_one_accepted(impl, device):
    x, w, m, b = _inputs((3, 40), 30, torch.float32, device)
    other = staircase_mask(30, 40, seed=5).to(device)
    assert (m & ~other).any()  # other's layout misses some of m's non-zeros
    with pytest.raises(ValueError, match="layout does not belong to this mask"):
        masked_linear(x, w, m, b, layout=mask_layout(other, tile=4, overhead=0))
    with pytest.raises(TypeError, match="layout must be a MaskLayout"):
        masked_linear(x, w, m, b, layout=tuple(mask_layout(m)))
    ref = reference(x, w, m, b)
    # a superset's layout covers m's non-zeros, but its all-ones ranges hold zeros of m (where
    # the CPU kernel would read the unmasked weight): refused
    from fastgen.ops.masked_linear import MaskLayout, dense_layout
    sup = mask_layout(m | other, tile=4, overhead=0)
    mc = m.cpu()
    assert any(d1 > d0 and not mm[a0:a1, d0:d1].all() for blocks, mm in ((sup.row_blocks, mc), (sup.col_blocks, mc.t()))
               for a0, a1, _, _, d0, d1 in blocks.tolist())
    with pytest.raises(ValueError, match="zeros inside its all-ones ranges"):
        masked_linear(x, w, m, b, layout=sup)
    # a layout covering the mask is correct, whichever mask it came from: the dense one, a copy
    # of m's, a superset's without its all-ones ranges
    no_ones = [t.clone() for t in sup]
    for t in no_ones:
        t[:, 5] = t[:, 4]
    for lay in (dense_layout(30, 40), mask_layout(m.clone(), tile=4, overhead=0), MaskLayout(*no_ones)):
        torch.testing.assert_close(masked_linear(x, w, m, b, layout=lay), ref, **TOL[torch.float32])
    # the layout follows in-place edits of its own mask: checked again when the version changes
    lay = mask_layout(m, tile=4, overhead=0)
    masked_linear(x, w, m, b, layout=lay)
    m[0, -1] = True  # the first row group's span ended before the last column
    with pytest.raises(ValueError, match="layout does not belong to this mask"):
        masked_linear(x, w, m, b, layout=lay)


def test_module_layout_follows_the_mask(impl, device):
    """load_state_dict with another mask and in-place edits of the mask buffer: the module's
    layout is rebuilt (it used the old one before: max error 2.0)."""
    a, b_mask = staircase_mask(24, 20, seed=1), staircase_mask(24, 20, seed=2).flip(1)
    ml = MaskedLinear(20, 24, a).to(device)
    x = torch.randn(5, 20, device=device)
    ml.load_state_dict({**ml.state_dict(), "mask": b_mask})
    torch.testing.assert_close(ml(x), reference(x, ml.weight, ml.mask, ml.bias), **TOL[torch.float32])
    with torch.no_grad():
        ml.mask.fill_(True)
    torch.testing.assert_close(ml(x), F.linear(x, ml.weight, ml.bias), **TOL[torch.float32])
    with torch.no_grad():
        ml.mask.copy_(a.to(device))
    torch.testing.assert_close(ml(x), reference(x, ml.weight, ml.mask, ml.bias), **TOL[torch.float32])
    work = sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1, _, _ in ml.layout.row_blocks.tolist())
    assert work < ml.mask.numel()  # the rebuilt layout skips blocks again (not just dense)
    with pytest.raises(ValueError, match="layout does not belong"):
        ml.set_mask(b_mask, layout=mask_layout(a))
    ml.set_mask(b_mask, layout=mask_layout(b_mask))
    torch.testing.assert_close(ml(x), reference(x, ml.weight, ml.mask, ml.bias), **TOL[torch.float32])


def test_bad_input_raises_naming_the_argument(impl, device):
    x, w, m, b = _inputs((3, 5), 4, torch.float32, device)
    with pytest.raises(ValueError, match="mask has shape"):
        masked_linear(x, w, m[:, :4], b)
    with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
        masked_linear(x, w, m.float() * 2, b)
    with pytest.raises(ValueError, match="x has 4 features"):
        masked_linear(x[:, :4], w, m, b)
    with pytest.raises(TypeError, match="x has dtype"):
        masked_linear(x.double(), w, m, b)
    with pytest.raises(ValueError, match="bias must have shape"):
        masked_linear(x, w, m, b[:3])
    with pytest.raises(TypeError, match="x must be float32"):
        masked_linear(x.long(), w, m, b)
    with pytest.raises(ValueError, match="mask must have shape"):
        MaskedLinear(5, 4, m[:3])
    with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
        MaskedLinear(5, 4, torch.full((4, 5), 0.5))


@pytest.mark.skipif(not _ext.AVAILABLE, reason="compiled extension not built")
def test_compiled_op_rejects_a_foreign_layout():
    x, w, m, b = _inputs((3, 5), 4, torch.float32)
    lay = mask_layout(m)
    with pytest.raises(RuntimeError, match="row_blocks"):
        torch.ops.fastgen.masked_linear(x, w, m, b, lay.row_blocks[:, :3], lay.col_blocks)
    with pytest.raises(RuntimeError, match="not a layout"):
        torch.ops.fastgen.masked_linear(x, w, m, b, lay.row_blocks + 1, lay.col_blocks)
    with pytest.raises(RuntimeError, match="mask must be a bool"):
        torch.ops.fastgen.masked_linear(x, w, m.float(), b, lay.row_blocks, lay.col_blocks)


def _large_mask(kind):
    if kind == "staircase":
        return staircase_mask(1600, 1500)
    if kind == "dense":           # one block: the kernel cuts it into several pieces
        return torch.ones(1600, 1500, dtype=torch.bool)
    m = staircase_mask(1600, 1500)  # blocks with empty spans: output rows and input columns unused
    m[:300] = False
    m[:, 1200:] = False
    return m


@pytest.mark.skipif(not _ext.AVAILABLE, reason="compiled extension not built")
@pytest.mark.parametrize("kind", ["staircase", "dense", "blank rows and columns"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_large_problem_threaded_path_matches_reference(kind, dtype):
    """Big enough for the CPU kernel's multi-threaded passes (it runs small ones inline)."""
    m = _large_mask(kind)
    x, w, _, b = _inputs((48, 1500), 1600, dtype, requires_grad=True, mask=m)
    gy = torch.randn(48, 1600, dtype=dtype)
    with fastgen.use_impl("cpp"):
        y = masked_linear(x, w, m, b, layout=mask_layout(m))
        g = torch.autograd.grad((y * gy).sum(), (x, w, b))
    y_ref = reference(x, w, m, b)
    g_ref = torch.autograd.grad((y_ref * gy).sum(), (x, w, b))
    tol = dict(rtol=1e-4, atol=1e-3) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y, y_ref, **tol)
    for a, r in zip(g, g_ref):
        torch.testing.assert_close(a, r, **tol)
    assert torch.all(g[1][~m] == 0)


@pytest.mark.skipif(not _ext.AVAILABLE, reason="compiled extension not built")
def test_large_problem_bf16_error_at_most_twice_reference():
    m = staircase_mask(700, 600)
    x, w, _, b = _inputs((64, 600), 700, torch.bfloat16, requires_grad=True, mask=m)
    gy = torch.randn(64, 700, dtype=torch.bfloat16)
    with fastgen.use_impl("cpp"):
        y = masked_linear(x, w, m, b)
        g = torch.autograd.grad((y * gy).sum(), (x, w, b))
    y_ref = reference(x, w, m, b)
    g_ref = torch.autograd.grad((y_ref * gy).sum(), (x, w, b))
    xd, wd, bd = (t.detach().double().requires_grad_(True) for t in (x, w, b))
    y_true = reference(xd, wd, m, bd)
    g_true = torch.autograd.grad((y_true * gy.double()).sum(), (xd, wd, bd))
    assert_close_bf16(y, y_ref, y_true)
    for a, r, t in zip(g, g_ref, g_true):
        assert_close_bf16(a, r, t)
    assert torch.all(g[1][~m] == 0)
