"""Triton kernels of fastgen.ops.row_lstm_scan (cell math: csrc/row_lstm_scan/row_lstm_scan.h).

One program per batch element runs the whole scan (a persistent loop over the H rows), its
hidden state tile (h, W) in registers and its cell state carried across rows:
    z_q = x[b, q*h:(q+1)*h, r, :] + bias_q + sum_k W[q*h:(q+1)*h, :, k] @ h_{r-1}[:, w + k - 1]
    i, f, o = sigmoid(z_i, z_f, z_o), g = tanh(z_g); c_r = f c_{r-1} + i g; h_r = o tanh(c_r)
The shifted previous rows are re-read from the hidden output in global memory (written the
row before; a barrier orders it). The backward runs the rows in reverse with the saved gates and
cells; dz_q feeds dx, and the next dh = sum_{q,k} W_qk^T @ dz_q[:, w - k + 1], with the
shifted dz re-read from dx. Accumulation in fp32 (fp64 for fp64 inputs); bf16 runs in fp32.
The weight and bias gradients are not accumulated inside the scan (atomics from every program,
in no fixed order): after it, dx holds every gate gradient dz, and
    dW[j, c, k] = sum_{b, r >= 1, w} dz[b, j, r, w] h[b, c, r - 1, w + k - 1],  db[j] = sum dz[b, j]
are one GEMM and one reduction in PyTorch (row_lstm_param_grads): deterministic, on cuBLAS.
Offsets are int64 (the batch index is widened first), so tensors past 2^31 elements index right.
"""
import torch
import triton
import triton.language as tl

from fastgen.kernels._common import div, exp, on_device


@triton.jit
def _sigmoid(x):
    e = exp(-tl.abs(x))
    r = div(tl.full(x.shape, 1.0, x.dtype), 1.0 + e)
    return tl.where(x >= 0, r, e * r)


@triton.jit
def _tanh(x):
    e = exp(-2.0 * tl.abs(x))
    t = div(1.0 - e, 1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def _weight_tile(w_ptr, q, k, h, rows, cols, ok2):
    # W[q*h + rows, cols, k] as an (HB, HB) tile (weight_ss is (4h, h, 3) contiguous)
    return tl.load(w_ptr + ((q * h + rows[:, None]) * h + cols[None, :]) * 3 + k, mask=ok2, other=0.0)


@triton.jit
def _gate_pre(x_ptr, w_ptr, b_ptr, hid_ptr, b, r, q, h, H, W, u, wv, uok,
              HAS_BIAS: tl.constexpr, HB: tl.constexpr, WB: tl.constexpr, ACC: tl.constexpr):
    """Pre-activation of gate q at row r: (HB, WB)."""
    G = 4 * h
    ok = uok[:, None] & (wv[None, :] < W)
    z = tl.load(x_ptr + ((b * G + q * h + u[:, None]) * H + r) * W + wv[None, :], mask=ok, other=0.0).to(ACC)
    if HAS_BIAS:
        z += tl.load(b_ptr + q * h + u, mask=uok, other=0.0).to(ACC)[:, None]
    if r > 0:
        for k in tl.static_range(3):
            ws = wv + (k - 1)
            okk = uok[:, None] & (ws[None, :] >= 0) & (ws[None, :] < W)
            hp = tl.load(hid_ptr + ((b * h + u[:, None]) * H + (r - 1)) * W + ws[None, :], mask=okk, other=0.0)
            wt = _weight_tile(w_ptr, q, k, h, u, u, uok[:, None] & uok[None, :])
            z += tl.dot(wt.to(ACC), hp.to(ACC), input_precision="ieee", out_dtype=ACC)
    return z


@triton.jit
def _forward_kernel(x_ptr, w_ptr, b_ptr, hid_ptr, cell_ptr, gates_ptr, B, h, H, W,
                    HAS_BIAS: tl.constexpr, HB: tl.constexpr, WB: tl.constexpr, ACC: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    u = tl.arange(0, HB)
    wv = tl.arange(0, WB)
    uok = u < h
    ok = uok[:, None] & (wv[None, :] < W)
    BW = (b * 0 + B) * W  # int64 (b is); B may be a constexpr (Triton specialises 1)
    c = tl.zeros([HB, WB], dtype=ACC)
    for r in range(0, H):
        i = _sigmoid(_gate_pre(x_ptr, w_ptr, b_ptr, hid_ptr, b, r, 0, h, H, W, u, wv, uok, HAS_BIAS, HB, WB, ACC))
        f = _sigmoid(_gate_pre(x_ptr, w_ptr, b_ptr, hid_ptr, b, r, 1, h, H, W, u, wv, uok, HAS_BIAS, HB, WB, ACC))
        g = _tanh(_gate_pre(x_ptr, w_ptr, b_ptr, hid_ptr, b, r, 2, h, H, W, u, wv, uok, HAS_BIAS, HB, WB, ACC))
        o = _sigmoid(_gate_pre(x_ptr, w_ptr, b_ptr, hid_ptr, b, r, 3, h, H, W, u, wv, uok, HAS_BIAS, HB, WB, ACC))
        c = f * c + i * g
        hv = o * _tanh(c)
        col = b * W + wv[None, :]
        gbase = gates_ptr + r * 4 * h * BW + col
        tl.store(gbase + u[:, None] * BW, i, mask=ok)
        tl.store(gbase + (h + u[:, None]) * BW, f, mask=ok)
        tl.store(gbase + (2 * h + u[:, None]) * BW, g, mask=ok)
        tl.store(gbase + (3 * h + u[:, None]) * BW, o, mask=ok)
        tl.store(cell_ptr + (r * h + u[:, None]) * BW + col, c, mask=ok)
        tl.store(hid_ptr + ((b * h + u[:, None]) * H + r) * W + wv[None, :], hv, mask=ok)
        tl.debug_barrier()  # the next row re-reads this row's hidden state shifted along W


@triton.jit
def _gate_grad(dz, gx_ptr, b, r, q, h, H, W, u, wv, uok):
    """Store dz of gate q at row r into dx (the weight and bias gradients come after the scan)."""
    G = 4 * h
    ok = uok[:, None] & (wv[None, :] < W)
    tl.store(gx_ptr + ((b * G + q * h + u[:, None]) * H + r) * W + wv[None, :], dz, mask=ok)


@triton.jit
def _recurrent_grad(gx_ptr, w_ptr, b, r, q, h, H, W, u, wv, uok, HB: tl.constexpr, WB: tl.constexpr,
                    ACC: tl.constexpr):
    """sum_k W_qk^T @ dz_q[:, w - k + 1] (dz re-read from dx): gate q's share of dh_{r-1}."""
    G = 4 * h
    acc = tl.zeros([HB, WB], dtype=ACC)
    for k in tl.static_range(3):
        ws = wv - (k - 1)
        okk = uok[:, None] & (ws[None, :] >= 0) & (ws[None, :] < W)
        dz = tl.load(gx_ptr + ((b * G + q * h + u[:, None]) * H + r) * W + ws[None, :], mask=okk, other=0.0)
        wt = _weight_tile(w_ptr, q, k, h, u, u, uok[:, None] & uok[None, :]).to(ACC)
        acc += tl.dot(tl.trans(wt), dz.to(ACC), input_precision="ieee", out_dtype=ACC)
    return acc


@triton.jit
def _backward_kernel(gh_ptr, w_ptr, hid_ptr, cell_ptr, gates_ptr, gx_ptr, B, h, H, W,
                     HB: tl.constexpr, WB: tl.constexpr, ACC: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    u = tl.arange(0, HB)
    wv = tl.arange(0, WB)
    uok = u < h
    ok = uok[:, None] & (wv[None, :] < W)
    BW = (b * 0 + B) * W  # int64 (b is); B may be a constexpr (Triton specialises 1)
    col = b * W + wv[None, :]
    dh_rec = tl.zeros([HB, WB], dtype=ACC)
    dc = tl.zeros([HB, WB], dtype=ACC)
    for rr in range(0, H):
        r = H - 1 - rr
        dh = dh_rec + tl.load(gh_ptr + ((b * h + u[:, None]) * H + r) * W + wv[None, :], mask=ok, other=0.0).to(ACC)
        gbase = gates_ptr + r * 4 * h * BW + col
        i = tl.load(gbase + u[:, None] * BW, mask=ok, other=0.0)
        f = tl.load(gbase + (h + u[:, None]) * BW, mask=ok, other=0.0)
        g = tl.load(gbase + (2 * h + u[:, None]) * BW, mask=ok, other=0.0)
        o = tl.load(gbase + (3 * h + u[:, None]) * BW, mask=ok, other=0.0)
        c = tl.load(cell_ptr + (r * h + u[:, None]) * BW + col, mask=ok, other=0.0)
        c_prev = tl.load(cell_ptr + ((r - 1) * h + u[:, None]) * BW + col, mask=ok & (r > 0), other=0.0)
        tc = _tanh(c)
        dcur = dc + dh * o * (1.0 - tc * tc)
        _gate_grad(dcur * g * i * (1.0 - i), gx_ptr, b, r, 0, h, H, W, u, wv, uok)
        _gate_grad(dcur * c_prev * f * (1.0 - f), gx_ptr, b, r, 1, h, H, W, u, wv, uok)
        _gate_grad(dcur * i * (1.0 - g * g), gx_ptr, b, r, 2, h, H, W, u, wv, uok)
        _gate_grad(dh * tc * o * (1.0 - o), gx_ptr, b, r, 3, h, H, W, u, wv, uok)
        dc = dcur * f
        tl.debug_barrier()  # dz of this row is re-read from dx, shifted along W
        dh_rec = tl.zeros([HB, WB], dtype=ACC)
        if r > 0:
            for q in tl.static_range(4):
                dh_rec += _recurrent_grad(gx_ptr, w_ptr, b, r, q, h, H, W, u, wv, uok, HB, WB, ACC)


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _blocks(h, W):
    # tl.dot wants every dimension >= 16
    return max(16, triton.next_power_of_2(h)), max(16, triton.next_power_of_2(W))


@on_device
def row_lstm_scan_forward(input_gates, weight_ss, bias):
    """input_gates (B, 4h, H, W), weight_ss (4h, h, 3), bias (4h,) or None ->
    hidden (B, h, H, W), cell (H, h, B, W), gates (H, 4h, B, W) (the latter two in fp32 for bf16)."""
    dtype = input_gates.dtype
    acc = torch.float32 if dtype == torch.bfloat16 else dtype
    x = input_gates.to(acc).contiguous()
    w = weight_ss.to(acc).contiguous()
    B, G, H, W = x.shape
    h = G // 4
    hidden = x.new_zeros(B, h, H, W)
    cell, gates = x.new_empty(H, h, B, W), x.new_empty(H, G, B, W)
    if hidden.numel() == 0:
        return hidden.to(dtype), cell, gates
    bias_c = bias.to(acc).contiguous() if bias is not None else w
    HB, WB = _blocks(h, W)
    _forward_kernel[(B,)](x, w, bias_c, hidden, cell, gates, B, h, H, W, HAS_BIAS=bias is not None,
                          HB=HB, WB=WB, ACC=_acc(acc))
    return hidden.to(dtype), cell, gates


def row_lstm_param_grads(dz, hidden, bias_grad):
    """Weight and bias gradients from the gate gradients dz (B, 4h, H, W) and the hidden states
    (B, h, H, W), both in the accumulation dtype: dW[j, c, k] = sum_{b, r >= 1, w} dz[b, j, r, w]
    h[b, c, r - 1, w + k - 1] as one GEMM over (b, r, w), db = sum of dz; deterministic."""
    B, G, H, W = dz.shape
    h = hidden.shape[1]
    gw = dz.new_zeros(G, h, 3)
    if H > 1 and B * W > 0:
        d = dz[:, :, 1:].transpose(0, 1).reshape(G, -1)                      # (4h, B (H-1) W)
        hp = torch.nn.functional.pad(hidden[:, :, :-1], (1, 1))             # (B, h, H-1, W+2)
        shifted = torch.stack([hp[..., k:k + W] for k in range(3)], 2)      # (B, h, 3, H-1, W)
        hs = shifted.permute(1, 2, 0, 3, 4).reshape(3 * h, -1)             # (h*3, B (H-1) W)
        gw = (d @ hs.t()).view(G, h, 3)
    gb = dz.sum((0, 2, 3)) if bias_grad else dz.new_zeros(0)
    return gw, gb


@on_device
def row_lstm_scan_backward(grad_hidden, weight_ss, hidden, cell, gates, bias_requires_grad):
    """-> grad_input (B, 4h, H, W), grad_weight (4h, h, 3), grad_bias (4h,) or (0,)."""
    dtype = hidden.dtype
    acc = cell.dtype
    B, h, H, W = hidden.shape
    gx = torch.zeros(B, 4 * h, H, W, dtype=acc, device=hidden.device)
    hidden_acc = hidden.to(acc).contiguous()
    if hidden.numel() > 0:
        HB, WB = _blocks(h, W)
        _backward_kernel[(B,)](grad_hidden.to(acc).contiguous(), weight_ss.to(acc).contiguous(),
                               hidden_acc, cell.contiguous(), gates.contiguous(), gx, B, h, H, W,
                               HB=HB, WB=WB, ACC=_acc(acc))
    gw, gb = row_lstm_param_grads(gx, hidden_acc, bias_requires_grad)
    return gx.to(dtype), gw.to(dtype), gb.to(dtype)
