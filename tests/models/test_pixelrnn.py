"""RowLSTM, DiagonalBiLSTM and PixelRNN: the autoregressive property (both layers, both
diagonal directions, both masks, 1 and 3 channels; the model per (pixel, colour) with colour
images), the gate layout of the masked input-to-state conv, every conv a MaskedConv2d on the
fused op, exact normalisation, samples distributed as exp(log_prob), fast sampling equal to
naive, and bad arguments."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgen.nn.masked_conv2d as masked_conv2d_module
from fastgen import _ext, use_impl
from fastgen.models import PixelRNN
from fastgen.nn import DiagonalBiLSTM, MaskedConv2d, RowLSTM
from fastgen.nn.diagonal_bilstm import DiagonalLSTM, skew, unskew
from fastgen.nn.row_lstm import LSTMGateConv2d


def _randomise(module, std=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


def _dependencies(fn, shape):
    """(out dims, in dims) boolean: d out / d in != 0 at a random point (float64 Jacobian)."""
    x = torch.randn(shape, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda v: fn(v.view(shape)).reshape(-1), x.reshape(-1))
    return J.abs() > 0


def _allowed(C_out, C_in, H, W, mask_type, data_channels, region="causal"):
    """Allowed (out, in) dependencies of a per-pixel layer with MaskedConv2d's block channel
    groups (channel i of n in group i * C // n)."""
    out = torch.zeros(C_out, H, W, C_in, H, W, dtype=torch.bool)
    for co, r, c, ci, r2, c2 in itertools.product(range(C_out), range(H), range(W), range(C_in), range(H), range(W)):
        if region == "upper_left":  # one diagonal direction: r2 <= r, c2 <= c
            ok = r2 <= r and c2 <= c and (r2, c2) != (r, c)
        else:
            ok = r2 < r or (r2 == r and c2 < c)
        if (r2, c2) == (r, c):
            go, gi = co * data_channels // C_out, ci * data_channels // C_in
            ok = gi < go if mask_type == "A" else gi <= go
        out[co, r, c, ci, r2, c2] = ok
    return out.reshape(C_out * H * W, C_in * H * W)


@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("data_channels", [1, 3])
def test_row_lstm_is_causal(mask_type, data_channels):
    C, h, H, W = 3, 6, 4, 5
    layer = _randomise(RowLSTM(C, h, kernel_size=3, mask_type=mask_type, data_channels=data_channels).double())
    dep = _dependencies(layer, (1, C, H, W))
    allowed = _allowed(h, C, H, W, mask_type, data_channels)
    assert not (dep & ~allowed).any(), "RowLSTM output depends on the future"
    # and it sees something: the last pixel depends on the row above it and on its left
    assert dep.any(dim=1).sum() > 0


@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("data_channels", [1, 3])
def test_diagonal_bilstm_is_causal(mask_type, data_channels):
    C, h, H, W = 3, 6, 4, 5
    layer = _randomise(DiagonalBiLSTM(C, h, mask_type=mask_type, data_channels=data_channels).double())
    dep = _dependencies(layer, (1, C, H, W))
    allowed = _allowed(h, C, H, W, mask_type, data_channels)
    assert not (dep & ~allowed).any(), "DiagonalBiLSTM output depends on the future"


@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_gate_conv_layout(mask_type, kernel_size):
    """LSTMGateConv2d's output is gate-major (gate j of unit u at channel j*h + u, as
    row_lstm_scan reads it) and all four gates of unit u are masked as u's colour group
    u * C // h: against F.conv2d on gate_weight() and a mask written from that rule."""
    cin, h, C = 6, 6, 3
    conv = _randomise(LSTMGateConv2d(cin, h, (1, kernel_size), mask_type, C).double())
    x = torch.randn(2, cin, 3, 5, dtype=torch.float64)
    w = conv.gate_weight()
    torch.testing.assert_close(conv(x), F.conv2d(x, w, padding=(0, kernel_size // 2)))
    unit_group = torch.arange(h) * C // h
    out_group = unit_group.repeat(4)                      # channel j*h + u -> group of unit u
    in_group = torch.arange(cin) * C // cin
    centre = (in_group[None] < out_group[:, None]) if mask_type == "A" else (in_group[None] <= out_group[:, None])
    half = kernel_size // 2
    assert torch.equal(w[:, :, 0, half] != 0, centre)
    assert (w[:, :, 0, :half] != 0).all() and (w[:, :, 0, half + 1:] == 0).all()


def test_diagonal_directions():
    """Left-to-right direction: (r, c) sees exactly (r' <= r, c' <= c); the right-to-left one
    (on the mirrored image) sees (r' <= r, c' >= c); the bidirectional layer the whole past."""
    C, h, H, W = 1, 4, 4, 5
    left = _randomise(DiagonalLSTM(C, h, mask_type="B").double())
    dep = _dependencies(left, (1, C, H, W)).reshape(h, H, W, H, W).any(0)
    for r, c, r2, c2 in itertools.product(range(H), range(W), range(H), range(W)):
        assert bool(dep[r, c, r2, c2]) == (r2 <= r and c2 <= c), (r, c, r2, c2)
    right = lambda x: left(x.flip(3)).flip(3)  # noqa: E731
    dep = _dependencies(right, (1, C, H, W)).reshape(h, H, W, H, W).any(0)
    for r, c, r2, c2 in itertools.product(range(H), range(W), range(H), range(W)):
        assert bool(dep[r, c, r2, c2]) == (r2 <= r and c2 >= c), (r, c, r2, c2)
    bi = _randomise(DiagonalBiLSTM(C, h, mask_type="B").double())
    dep = _dependencies(bi, (1, C, H, W)).reshape(h, H, W, H, W).any(0)
    for r, c, r2, c2 in itertools.product(range(H), range(W), range(H), range(W)):
        assert bool(dep[r, c, r2, c2]) == (r2 < r or (r2 == r and c2 <= c)), (r, c, r2, c2)


def test_skew_roundtrip():
    x = torch.randn(2, 3, 4, 5)
    s = skew(x)
    assert s.shape == (2, 3, 4, 8)
    for r in range(4):
        torch.testing.assert_close(s[:, :, r, r: r + 5], x[:, :, r])
    torch.testing.assert_close(unskew(s, 5), x)


def _model(kind, C=1, H=3, W=3, levels=2, seed=0, hidden=6, std=0.6):
    torch.manual_seed(seed)
    m = PixelRNN((C, H, W), kind=kind, num_levels=levels, hidden_channels=hidden, num_layers=2)
    return _randomise(m.double(), std=std, seed=seed)


@pytest.mark.parametrize("kind", ["row", "diagonal"])
@pytest.mark.parametrize("C", [1, 3])
def test_model_is_autoregressive(kind, C):
    m = _model(kind, C=C, H=4, W=3, levels=3, hidden=12, std=0.4)
    D = m.num_dims
    dep = torch.zeros(D, D, dtype=torch.bool)
    for seed in range(3):  # union over points: a ReLU may be flat at one of them
        v = torch.rand(D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
        J = torch.autograd.functional.jacobian(lambda v: m.logits(v.view(1, *m.input_shape)).reshape(3, D), v)
        dep |= J.abs().sum(0) > 0
    pos = torch.empty(D, dtype=torch.long)
    pos[m.ordering()] = torch.arange(D)
    assert not (dep & (pos[None, :] >= pos[:, None])).any(), "a conditional sees itself or the future"
    last = m.ordering()[-1]
    assert int(dep[last].sum()) == D - 1, "the last dimension should see every earlier one"


@pytest.mark.parametrize("kind", ["row", "diagonal"])
def test_model_colour_causality(kind):
    """C = 3 colours, K = 4 levels: d logits[:, k, c, p] / d x[:, d, q] is zero unless q comes
    before p in raster order, or q == p and d < c; and non-zero for every same-pixel pair d < c
    and for every earlier pixel seen from the last one."""
    C, H, W, K = 3, 3, 4, 4
    m = _model(kind, C=C, H=H, W=W, levels=K, hidden=12, std=0.4)
    with torch.no_grad():  # the head's ReLUs open: a missing dependence is then structural
        m.input_conv.bias.add_(3.0)
        m.head.conv1.bias.add_(3.0)
    shape = (1, C, H, W)
    dep = torch.zeros(C, H * W, C, H * W, dtype=torch.bool)
    for seed in range(2):  # union over points
        v = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * (K - 1)
        J = torch.autograd.functional.jacobian(m.logits, v)  # (1, K, C, H, W, 1, C, H, W)
        dep |= (J.abs().sum(dim=(0, 1)) > 0).reshape(C, H * W, C, H * W)
    for c, p, d, q in itertools.product(range(C), range(H * W), range(C), range(H * W)):
        allowed = q < p or (q == p and d < c)
        assert allowed or not dep[c, p, d, q], f"logit (pixel {p}, colour {c}) sees input (pixel {q}, colour {d})"
        if q == p and d < c:
            assert dep[c, p, d, q], f"logit (pixel {p}, colour {c}) misses colour {d} of its own pixel"
    last = H * W - 1
    assert dep[:, last, :, :last].all(), "the last pixel should see every earlier pixel"


@pytest.mark.parametrize("kind", ["row", "diagonal"])
def test_every_conv_is_a_masked_conv_on_the_fused_op(kind, monkeypatch):
    """Input conv, LSTM input-to-state convs, residual 1x1s and head: MaskedConv2d modules (no
    nn.Conv2d), each calling fastgen.ops.masked_conv2d once per forward."""
    m = _model(kind, C=3, H=3, W=4, levels=4, hidden=6)
    assert not any(isinstance(mod, (nn.Conv1d, nn.Conv2d)) for mod in m.modules())
    convs = [mod for mod in m.modules() if isinstance(mod, MaskedConv2d)]
    per_layer = 2 if kind == "row" else 3  # input-to-state (one per direction) + residual
    assert len(convs) == 1 + per_layer * len(m.lstms) + 2
    calls = []
    op = masked_conv2d_module.masked_conv2d
    monkeypatch.setattr(masked_conv2d_module, "masked_conv2d",
                        lambda x, w, *a: calls.append(w) or op(x, w, *a))
    x = torch.randint(0, 4, (2, 3, 3, 4)).double()
    m.log_prob(x)
    assert sorted(map(id, calls)) == sorted(id(c.weight) for c in convs)
    if _ext.AVAILABLE:  # and the compiled op is what runs under "cpp"
        from torch.utils._python_dispatch import TorchDispatchMode

        ops = []

        class Count(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                ops.append(str(func.overloadpacket))
                return func(*args, **(kwargs or {}))

        with use_impl("cpp"), Count():
            m.log_prob(x)
        assert ops.count("fastgen.masked_conv2d") == len(convs)
        assert not any("conv" in o and o != "fastgen.masked_conv2d" for o in ops), ops


@pytest.mark.parametrize("kind", ["row", "diagonal"])
def test_normalisation(kind):
    m = _model(kind, H=3, W=3)
    images = torch.tensor(list(itertools.product([0, 1], repeat=9)), dtype=torch.float32).view(-1, 1, 3, 3)
    total = torch.logsumexp(m.log_prob(images), 0).exp().item()
    assert abs(total - 1.0) < 1e-9
    m3 = _model(kind, C=1, H=2, W=2, levels=3)
    images = torch.tensor(list(itertools.product(range(3), repeat=4)), dtype=torch.float32).view(-1, 1, 2, 2)
    assert abs(torch.logsumexp(m3.log_prob(images), 0).exp().item() - 1.0) < 1e-9


@pytest.mark.parametrize("kind", ["row", "diagonal"])
def test_samples_follow_log_prob(kind):
    m = _model(kind, H=2, W=2)
    n = 4000
    s = m.sample(n, generator=torch.Generator().manual_seed(0))
    codes = (s.view(n, 4) * torch.tensor([8, 4, 2, 1])).sum(1).long()
    counts = torch.bincount(codes, minlength=16).double()
    images = torch.tensor(list(itertools.product([0, 1], repeat=4)), dtype=torch.float32).view(16, 1, 2, 2)
    expected = n * m.log_prob(images).exp()
    small = expected < 5  # pool the rare images so the chi-square approximation holds
    obs = torch.cat([counts[~small], counts[small].sum().view(1)])
    exp = torch.cat([expected[~small], expected[small].sum().view(1)])
    obs, exp = obs[exp > 0], exp[exp > 0]
    chi2 = ((obs - exp) ** 2 / exp).sum().item()
    dof = len(obs) - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof), f"chi-square {chi2:.1f} with {dof} dof"  # ~5 sigma


@pytest.mark.parametrize("kind", ["row", "diagonal"])
@pytest.mark.parametrize("C,levels,dtype", [(1, 2, torch.float64), (3, 4, torch.float64), (1, 2, torch.float32)])
def test_fast_sampling_equals_naive(kind, C, levels, dtype):
    m = _model(kind, C=C, H=3, W=4, levels=levels).to(dtype)
    naive = m.sample(3, generator=torch.Generator().manual_seed(1), fast=False)
    fast = m.sample(3, generator=torch.Generator().manual_seed(1), fast=True)
    assert torch.equal(naive, fast)
    cond = naive.clone()
    cond[:, :, 2:] = -1
    cond[0, 0, 2, 1] = 1
    a = m.sample(3, conditioned_on=cond, generator=torch.Generator().manual_seed(2), fast=False)
    b = m.sample(3, conditioned_on=cond, generator=torch.Generator().manual_seed(2), fast=True)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :, :2], naive[:, :, :2]) and a[0, 0, 2, 1] == 1


def test_interface_and_training_step():
    m = PixelRNN((1, 5, 4), kind="row", hidden_channels=8, num_layers=1)
    x = torch.randint(0, 2, (3, 1, 5, 4))
    lp = m.log_prob(x)
    assert lp.shape == (3,) and (lp < 0).all()
    torch.testing.assert_close(m.bits_per_dim(x), -lp / (20 * math.log(2)))
    loss = m.loss(x)
    loss.backward()
    assert m.lstms[0].weight_ss.grad is not None
    # masked weights get no gradient (the mask is applied per call, never in place)
    w = m.input_conv
    assert (w.weight.grad * (1 - w.mask())).abs().sum() == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        PixelRNN((1, 4, 4), kind="column")
    with pytest.raises(ValueError, match="hidden_channels"):
        PixelRNN((3, 4, 4), hidden_channels=8)
    with pytest.raises(ValueError, match="kernel_size"):
        RowLSTM(1, 4, kernel_size=2)
    with pytest.raises(ValueError, match="mask_type"):
        RowLSTM(1, 4, mask_type="C")
    with pytest.raises(ValueError, match="hidden_channels"):
        DiagonalBiLSTM(3, 4, data_channels=3)
    m = PixelRNN((1, 4, 4), hidden_channels=4, num_layers=1)
    with pytest.raises(ValueError, match="x must have shape"):
        m.log_prob(torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="integer levels"):
        m.log_prob(torch.full((2, 1, 4, 4), 2.0))
