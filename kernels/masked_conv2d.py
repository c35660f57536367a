"""Triton kernels of fastgen.ops.masked_conv2d (mask geometry: csrc/masked_conv2d/masked_conv2d.h).

Implicit GEMM over the mask's non-zero taps only, activations in NHWC (M = N*H*W rows):
  forward      y[m, o]   = b[o] + sum_{taps (i, j), ci} x[m shifted by (i - ch, j - cw), ci] * W[o, ci, i, j]
                         (+ r[m, o], a residual added to the tile before the store)
  grad input   dx[m, ci] = sum_{taps (i, j), o}  dy[m shifted by (ch - i, cw - j), o] * W[o, ci, i, j]
  grad weight  dW[o, ci, i, j] = sum_m x[m shifted by (i - ch, j - cw), ci] * dy[m, o]   (used taps only)
Taps: rows i < ch fully, row ch for j < cw, and the centre where group(ci) < group(o) (type A) or
<= (type B), group(c) = c * G // C. The tap loops are unrolled at compile time (tl.static_range),
so the masked taps are never loaded. Accumulation in fp32 (fp64 for fp64 inputs); on the GPU
bf16 tiles go to tl.dot as they are (tensor cores) and fp32 ones in IEEE precision or TF32 where
torch's cuDNN setting allows it (torch.backends.cudnn.allow_tf32, as F.conv2d would).
Row indices are int64 from the start, so offsets past 2^31 elements are right.
"""
import torch
import triton
import triton.language as tl

from fastgen.kernels._common import INTERPRET, on_device


@triton.jit
def _conv_kernel(src_ptr, w_ptr, b_ptr, res_ptr, out_ptr, M, H, W, KC, NC, CIN, COUT, G,
                 CH: tl.constexpr, CW: tl.constexpr, KW: tl.constexpr, CENTRE: tl.constexpr,
                 TYPE_A: tl.constexpr, MIRROR: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
                 NATIVE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    # out[m, n] = sum_taps sum_k src[shift(m), k] * w[i, j, k, n]; forward: k = ci, n = o;
    # MIRROR (input gradient): src = dy, k = o, n = ci, the shift mirrored.
    rm = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < NC
    img = rm // (H * W)
    yy0 = (rm // W) % H
    xx0 = rm % W
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    for i in tl.static_range(CH + 1):
        for j in tl.static_range(KW):
            if i < CH or j < CW or (j == CW and CENTRE):
                if MIRROR:
                    yy = yy0 + (CH - i)
                    xx = xx0 + (CW - j)
                else:
                    yy = yy0 + (i - CH)
                    xx = xx0 + (j - CW)
                row_ok = m_ok & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
                base = ((img * H + yy) * W + xx).to(tl.int64) * KC
                for k0 in range(0, KC, BLOCK_K):
                    rk = k0 + tl.arange(0, BLOCK_K)
                    k_ok = rk < KC
                    a = tl.load(src_ptr + base[:, None] + rk[None, :], mask=row_ok[:, None] & k_ok[None, :],
                                other=0.0)
                    w_ok = k_ok[:, None] & n_ok[None, :]
                    if i == CH and j == CW:  # the centre: only the allowed channel pairs
                        if MIRROR:
                            go = rk[:, None] * G // COUT
                            gi = rn[None, :] * G // CIN
                        else:
                            go = rn[None, :] * G // COUT
                            gi = rk[:, None] * G // CIN
                        if TYPE_A:
                            w_ok = w_ok & (gi < go)
                        else:
                            w_ok = w_ok & (gi <= go)
                    wt = tl.load(w_ptr + ((i * KW + j) * KC + rk[:, None]).to(tl.int64) * NC + rn[None, :],
                                 mask=w_ok, other=0.0)
                    if NATIVE_DOT:  # bf16 on the GPU: tensor cores, fp32 accumulation
                        acc += tl.dot(a, wt, out_dtype=ACC)
                    else:
                        acc += tl.dot(a.to(ACC), wt.to(ACC), input_precision=PRECISION, out_dtype=ACC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(ACC)[None, :]
    offs = rm[:, None].to(tl.int64) * NC + rn[None, :]
    if HAS_RES:  # the residual (M, NC), same layout as the output
        acc += tl.load(res_ptr + offs, mask=m_ok[:, None] & n_ok[None, :], other=0.0).to(ACC)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _weight_grad_kernel(x_ptr, gy_ptr, gw_ptr, M, H, W, CIN, COUT, G,
                        CH: tl.constexpr, CW: tl.constexpr, KW: tl.constexpr, TYPE_A: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr,
                        ACC: tl.constexpr, NATIVE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    # One program per (used tap, Cin block, Cout block): gw[i, j, ci, o] = sum_m x[shift(m), ci] dy[m, o].
    t = tl.program_id(0)
    i = tl.where(t < CH * KW, t // KW, CH)
    j = tl.where(t < CH * KW, t % KW, t - CH * KW)
    rci = tl.program_id(1) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    rco = tl.program_id(2) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    ci_ok = rci < CIN
    co_ok = rco < COUT
    acc = tl.zeros([BLOCK_CI, BLOCK_CO], dtype=ACC)
    for m0 in range(0, M, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        img = rm // (H * W)
        yy = (rm // W) % H + (i - CH)
        xx = rm % W + (j - CW)
        row_ok = (rm < M) & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        xs = tl.load(x_ptr + ((img * H + yy) * W + xx).to(tl.int64)[None, :] * CIN + rci[:, None],
                     mask=ci_ok[:, None] & row_ok[None, :], other=0.0)
        gy = tl.load(gy_ptr + rm[:, None] * COUT + rco[None, :],
                     mask=(rm < M)[:, None] & co_ok[None, :], other=0.0)
        if NATIVE_DOT:
            acc += tl.dot(xs, gy, out_dtype=ACC)
        else:
            acc += tl.dot(xs.to(ACC), gy.to(ACC), input_precision=PRECISION, out_dtype=ACC)
    keep = ci_ok[:, None] & co_ok[None, :]
    centre = (i == CH) & (j == CW)
    gi = rci[:, None] * G // CIN
    go = rco[None, :] * G // COUT
    if TYPE_A:
        allowed = gi < go
    else:
        allowed = gi <= go
    acc = tl.where(centre & (allowed == 0), 0.0, acc)
    offs = ((i * KW + j) * CIN + rci[:, None]).to(tl.int64) * COUT + rco[None, :]
    tl.store(gw_ptr + offs, acc.to(gw_ptr.dtype.element_ty), mask=keep)


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _dot_args(dtype):
    """NATIVE_DOT (bf16 tiles straight to tl.dot) and PRECISION for fp32 tiles."""
    tf32 = not INTERPRET and dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    return dict(NATIVE_DOT=dtype == torch.bfloat16 and not INTERPRET, PRECISION="tf32" if tf32 else "ieee")


def _blocks(kc, nc):
    return 32, max(16, min(64, triton.next_power_of_2(max(nc, 1)))), max(16, min(32, triton.next_power_of_2(max(kc, 1))))


def _nhwc(t):
    return t.permute(0, 2, 3, 1).contiguous()


def _centre_used(mask_type, data_channels):
    return mask_type == "B" or data_channels > 1


def _run_conv(src, w_arranged, bias, out, n, h, w, kc, nc, cin, cout, groups, kh, kw, mask_type, mirror,
              residual=None):
    m = n * h * w
    if m == 0 or nc == 0:
        return
    bm, bn, bk = _blocks(kc, nc)
    grid = (triton.cdiv(m, bm), triton.cdiv(nc, bn))
    _conv_kernel[grid](src, w_arranged, bias if bias is not None else w_arranged,
                       residual if residual is not None else w_arranged, out, m, h, w, kc, nc, cin, cout,
                       groups, CH=kh // 2, CW=kw // 2, KW=kw, CENTRE=_centre_used(mask_type, groups),
                       TYPE_A=(mask_type == "A"), MIRROR=mirror, HAS_BIAS=bias is not None,
                       HAS_RES=residual is not None,
                       BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, ACC=_acc(src.dtype), **_dot_args(src.dtype))


@on_device
def masked_conv2d_forward(x, weight, bias, mask_type, data_channels, relu_input, residual=None):
    """x: (N, Cin, H, W), weight: (Cout, Cin, kh, kw), bias: (Cout,) or None, residual: (N, Cout, H, W)
    or None -> y (N, Cout, H, W) channels-last (+ residual); relu_input: the convolution of relu(x)
    (taken once before the kernel)."""
    if relu_input:
        x = torch.relu(x)
    n, cin, h, w = x.shape
    cout, _, kh, kw = weight.shape
    out = x.new_empty(n, h, w, cout)
    res = _nhwc(residual) if residual is not None else None
    if cin == 0:
        out.copy_((bias if bias is not None else x.new_zeros(cout)).expand_as(out))
        if res is not None:
            out += res
    else:
        _run_conv(_nhwc(x), weight.permute(2, 3, 1, 0).contiguous(), bias, out, n, h, w, cin, cout, cin, cout,
                  data_channels, kh, kw, mask_type, False, res)
    return out.permute(0, 3, 1, 2)


@on_device
def masked_conv2d_backward(grad_y, x, weight, mask_type, data_channels, relu_input, x_grad, weight_grad, bias_grad):
    """-> (grad_x channels-last or empty, grad_weight (zero on masked taps) or empty, grad_bias or empty).
    relu_input: grad_x through the input ReLU (zero where x <= 0; a NaN x passes it), grad_weight from relu(x)."""
    x_in = torch.relu(x) if relu_input else x
    n, cin, h, w = x.shape
    cout, _, kh, kw = weight.shape
    gy = _nhwc(grad_y)
    gx, gw, gb = x.new_empty(0), weight.new_empty(0), weight.new_empty(0)
    if x_grad:
        out = x.new_zeros(n, h, w, cin)
        if cout > 0:
            _run_conv(gy, weight.permute(2, 3, 0, 1).contiguous(), None, out, n, h, w, cout, cin, cin, cout,
                      data_channels, kh, kw, mask_type, True)
        if relu_input:
            out.masked_fill_(_nhwc(x) <= 0, 0)  # a NaN x passes, as threshold_backward
        gx = out.permute(0, 3, 1, 2)
    if weight_grad:
        arranged = weight.new_zeros(kh, kw, cin, cout)
        ch, cw = kh // 2, kw // 2
        taps = ch * kw + cw + (1 if _centre_used(mask_type, data_channels) else 0)
        m = n * h * w
        if m > 0 and taps > 0 and cin > 0 and cout > 0:
            bci = max(16, min(32, triton.next_power_of_2(cin)))
            bco = max(16, min(64, triton.next_power_of_2(cout)))
            grid = (taps, triton.cdiv(cin, bci), triton.cdiv(cout, bco))
            _weight_grad_kernel[grid](_nhwc(x_in), gy, arranged, m, h, w, cin, cout, data_channels, CH=ch, CW=cw,
                                      KW=kw, TYPE_A=(mask_type == "A"), BLOCK_M=32, BLOCK_CI=bci,
                                      BLOCK_CO=bco, ACC=_acc(x.dtype), **_dot_args(x.dtype))
        gw = arranged.permute(3, 2, 0, 1).contiguous()
    if bias_grad:
        gb = gy.sum(dim=(0, 1, 2), dtype=torch.float64 if gy.dtype == torch.float64 else torch.float32).to(weight.dtype)
    return gx, gw, gb
