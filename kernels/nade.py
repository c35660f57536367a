"""Triton kernels of fastgen.ops.nade (step math: csrc/nade/nade.h).

One program per block of BN examples walks all D steps (a persistent loop), its running
pre-activations a (BN, HB) in float64 registers (HB = H rounded up to a power of two):
    h = sigmoid(a);  logits[n, t, l] = sum_j h[n, j] V[t, l, j] + b[t, l];  a += v[:, t] W[:, t]
with the product v W rounded to the compute dtype before it enters the float64 sum (as in the
CPU kernel and the reference's cumsum). The backward program walks t = D-1..0 from a_{D-1},
carrying R = sum_{t' > t} da_{t'} (float64):
    dh = sum_l g[:, t, l] V[t, l];  da = dh h (1 - h);  dv[:, t] = R W[:, t]
    dW[:, t] += sum_n v[n, t] R[n];  dV[t, l] += sum_n g[n, t, l] h[n];  R += da;  a -= v[:, t-1] W[:, t-1]
The example-sums dW, dV, dc are written per program into partial buffers (P, ...) and summed
in program order afterwards: no atomics, deterministic. W is passed transposed, (D, H), so each
step reads a contiguous row. Accumulation in fp32 (fp64 for fp64 inputs); bf16 runs in fp32.
The register tile bounds H (a few thousand at most on a GPU).
"""
import torch
import triton
import triton.language as tl

from fastgen.kernels._common import div, exp, on_device


@triton.jit
def _sigmoid(x):
    # exp and div from _common: precise (libdevice, div_rn) when compiled for a GPU
    e = exp(-tl.abs(x))
    r = div(1.0, 1.0 + e)
    return tl.where(x >= 0, r, e * r)


@triton.jit
def _forward_kernel(v_ptr, wt_ptr, c_ptr, V_ptr, b_ptr, out_ptr, a_ptr, N, D, H, L,
                    BN: tl.constexpr, HB: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BN + tl.arange(0, BN)
    cols = tl.arange(0, HB)
    rok = rows < N
    cok = cols < H
    ok = rok[:, None] & cok[None, :]
    c = tl.load(c_ptr + cols, mask=cok, other=0.0).to(tl.float64)
    a = tl.zeros([BN, HB], dtype=tl.float64) + c[None, :]
    for t in range(0, D):
        h = _sigmoid(a.to(ACC))
        for l in range(0, L):
            vl = tl.load(V_ptr + (t * L + l) * H + cols, mask=cok, other=0.0).to(ACC)
            logit = tl.sum(h * vl[None, :], axis=1) + tl.load(b_ptr + t * L + l).to(ACC)
            tl.store(out_ptr + (rows * D + t) * L + l, logit, mask=rok)
        if t + 1 < D:
            vt = tl.load(v_ptr + rows * D + t, mask=rok, other=0.0).to(ACC)
            w = tl.load(wt_ptr + t * H + cols, mask=cok, other=0.0).to(ACC)
            a += (vt[:, None] * w[None, :]).to(tl.float64)
    tl.store(a_ptr + rows[:, None] * H + cols[None, :], a, mask=ok)


@triton.jit
def _backward_kernel(g_ptr, v_ptr, wt_ptr, V_ptr, a_ptr, gv_ptr, dwt_ptr, dV_ptr, dc_ptr, N, D, H, L,
                     GRAD_V: tl.constexpr, BN: tl.constexpr, HB: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BN + tl.arange(0, BN)
    cols = tl.arange(0, HB)
    rok = rows < N
    cok = cols < H
    ok = rok[:, None] & cok[None, :]
    a = tl.load(a_ptr + rows[:, None] * H + cols[None, :], mask=ok, other=0.0)
    R = tl.zeros([BN, HB], dtype=tl.float64)
    for tt in range(0, D):
        t = D - 1 - tt
        h = _sigmoid(a.to(ACC))
        dh = tl.zeros([BN, HB], dtype=ACC)
        for l in range(0, L):
            gl = tl.load(g_ptr + (rows * D + t) * L + l, mask=rok, other=0.0).to(ACC)  # 0 on padding rows
            vl = tl.load(V_ptr + (t * L + l) * H + cols, mask=cok, other=0.0).to(ACC)
            dh += gl[:, None] * vl[None, :]
            tl.store(dV_ptr + ((pid * D + t) * L + l) * H + cols, tl.sum(gl[:, None] * h, axis=0), mask=cok)
        r = R.to(ACC)
        w = tl.load(wt_ptr + t * H + cols, mask=cok, other=0.0).to(ACC)
        vt = tl.load(v_ptr + rows * D + t, mask=rok, other=0.0).to(ACC)
        if GRAD_V:
            tl.store(gv_ptr + rows * D + t, tl.sum(r * w[None, :], axis=1), mask=rok)
        tl.store(dwt_ptr + (pid * D + t) * H + cols, tl.sum(vt[:, None] * r, axis=0), mask=cok)
        R += (dh * h * (1.0 - h)).to(tl.float64)
        if t > 0:
            vp = tl.load(v_ptr + rows * D + t - 1, mask=rok, other=0.0).to(ACC)
            wp = tl.load(wt_ptr + (t - 1) * H + cols, mask=cok, other=0.0).to(ACC)
            a -= (vp[:, None] * wp[None, :]).to(tl.float64)
    tl.store(dc_ptr + pid * H + cols, tl.sum(R, axis=0), mask=cok)


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _blocks(N, H):
    BN = 4 if N <= 4 else 8
    return BN, max(16, triton.next_power_of_2(max(H, 1))), triton.cdiv(N, BN)


def _prepare(v, W, V):
    acc = torch.float32 if v.dtype == torch.bfloat16 else v.dtype
    return acc, v.to(acc).contiguous(), W.to(acc).t().contiguous(), V.to(acc).contiguous()


@on_device
def nade_forward(v, W, c, V, b):
    """v (N, D), W (H, D), c (H,), V (D, L, H), b (D, L) -> logits (N, D, L), a_last (N, H) float64."""
    N, D = v.shape
    H, L = W.shape[0], V.shape[1]
    acc, vc, wt, Vc = _prepare(v, W, V)
    out = torch.empty(N, D, L, dtype=acc, device=v.device)
    a_last = torch.empty(N, H, dtype=torch.float64, device=v.device)  # never a view of c (custom_op outputs alias nothing)
    a_last.copy_(c.to(acc).double().expand(N, H))
    if N == 0 or D == 0 or H == 0:
        if N and D and L:
            out.copy_(b.to(acc).expand(N, D, L))  # sigmoid of nothing: the logits are the biases
        return out.to(v.dtype), a_last
    BN, HB, P = _blocks(N, H)
    _forward_kernel[(P,)](vc, wt, c.to(acc).contiguous(), Vc, b.to(acc).contiguous(), out, a_last,
                          N, D, H, L, BN=BN, HB=HB, ACC=_acc(acc))
    return out.to(v.dtype), a_last


@on_device
def nade_backward(grad_logits, v, W, V, a_last, grad_v=True):
    """-> grad_v (N, D) (zeros unless grad_v), grad_W (H, D), grad_c (H,), grad_V (D, L, H), grad_b (D, L)."""
    N, D = v.shape
    H, L = W.shape[0], V.shape[1]
    acc, vc, wt, Vc = _prepare(v, W, V)
    g = grad_logits.to(acc).contiguous()
    gb = g.sum(0)
    if N == 0 or D == 0 or H == 0:
        z = lambda *s: torch.zeros(*s, dtype=v.dtype, device=v.device)  # noqa: E731
        return z(N, D), z(H, D), z(H), z(D, L, H), gb.to(v.dtype)
    BN, HB, P = _blocks(N, H)
    gv = (torch.empty if grad_v else torch.zeros)(N, D, dtype=acc, device=v.device)
    dwt = torch.empty(P, D, H, dtype=acc, device=v.device)
    dV = torch.zeros(P, D, L, H, dtype=acc, device=v.device)
    dc = torch.empty(P, H, dtype=torch.float64, device=v.device)
    _backward_kernel[(P,)](g, vc, wt, Vc, a_last.contiguous(), gv, dwt, dV, dc, N, D, H, L,
                           GRAD_V=bool(grad_v), BN=BN, HB=HB, ACC=_acc(acc))
    gW = dwt.sum(0).t().contiguous()
    return gv.to(v.dtype), gW.to(v.dtype), dc.sum(0).to(v.dtype), dV.sum(0).to(v.dtype), gb.to(v.dtype)
