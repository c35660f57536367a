"""Benchmark fastgen.ops.masked_conv2d: PixelCNN type-A 7x7, 64 -> 64 channels, 16 x 28 x 28.

Providers: the eager reference (a sum of one shifted 1x1 product per kept tap), the dense
F.conv2d on the masked weight (what PyTorch users write; the floor compares against it),
torch.compile(reference) (first-call compile time reported) and each built fastgen impl.
Forward and forward+backward (grads of x, weight and bias). Compute-bound: GFLOP/s counted on
the kept taps (24 of 49) as a fraction of a large sgemm measured in the same run.

Each case runs with torch's default threads and again with one thread: on a shared 2-core
machine the two-thread numbers of every provider swing by 10x with the neighbours' load, the
one-thread ratios are the stable ones.
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastgen  # noqa: E402
from bench._harness import compile_timed, main, sgemm_gflops, time_interleaved  # noqa: E402
from fastgen import _ext  # noqa: E402
from fastgen.ops import masked_conv2d  # noqa: E402
from fastgen.reference.masked_conv2d import build_mask  # noqa: E402
from fastgen.reference.masked_conv2d import masked_conv2d as reference  # noqa: E402


def _with_impl(impl):
    def fn(x, w, b, mask_type, groups):
        with fastgen.use_impl(impl):
            return masked_conv2d(x, w, b, mask_type, groups)
    return fn


def _dense(x, w, b, mask_type, groups):
    cout, cin, kh, kw = w.shape
    mask = build_mask(cout, cin, kh, kw, mask_type, groups, w.dtype, w.device)
    return F.conv2d(x, w * mask, b, padding=(kh // 2, kw // 2))


def _case(n, c, hw, k, repeats, sgemm, threads, with_compile):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, hw, hw, generator=g, requires_grad=True)
    w = (torch.randn(c, c, k, k, generator=g) / (c * k)).requires_grad_(True)
    b = torch.zeros(c, requires_grad=True)
    gy = torch.randn(n, c, hw, hw, generator=g)
    args = (x, w, b, "A", 1)
    impls = {"eager reference": reference, "F.conv2d(masked weight)": _dense}
    compile_s = None
    if with_compile:
        compiled, compile_s = compile_timed(reference, *args, backward=True)
        impls["torch.compile(reference)"] = compiled
    if _ext.AVAILABLE:
        impls["fastgen cpp"] = _with_impl("cpp")

    def forward(fn):
        def run():
            with torch.no_grad():
                fn(*args)
        return run

    def forward_backward(fn):
        def run():
            fn(*args).backward(gy)
            x.grad = w.grad = b.grad = None
        return run

    taps = (k // 2) * k + k // 2
    flops = 2 * n * hw * hw * c * c * taps
    rows = []
    for mode, wrap, mult in (("fwd", forward, 1), ("fwd+bwd", forward_backward, 3)):
        times = time_interleaved({name: wrap(f) for name, f in impls.items()}, repeats=repeats)
        base, dense = times["eager reference"], times["F.conv2d(masked weight)"]
        for name, t in times.items():
            gflops = mult * flops / t / 1e9
            note = f"{dense / t:.2f}x F.conv2d; {gflops:.1f} GFLOP/s (kept taps)"
            if sgemm:
                note += f" = {gflops / sgemm:.0%} of sgemm"
            if name.startswith("torch.compile") and mode == "fwd":
                note += f"; first call {compile_s:.1f} s"
            rows.append({"op": "masked_conv2d", "case": f"A {k}x{k} {c}->{c} {n}x{hw}x{hw} {mode}, {threads} thr",
                         "provider": name, "ms": t * 1e3, "speedup": base / t, "note": note,
                         "vs_dense_conv": dense / t})
    return rows


def run(quick=False):
    default_threads = torch.get_num_threads()
    if quick:
        return _case(2, 8, 8, 7, repeats=2, sgemm=None, threads=default_threads, with_compile=False)
    rows = []
    try:
        for threads in (default_threads, 1):
            torch.set_num_threads(threads)
            sgemm = sgemm_gflops()
            rows += _case(16, 64, 28, 7, repeats=7, sgemm=sgemm, threads=threads, with_compile=threads == 1)
            rows.append({"op": "sgemm", "case": f"2048^3, {threads} thr", "provider": "fastest of torch.mm, oneDNN",
                         "ms": None,
                         "note": f"{sgemm:.1f} GFLOP/s"})
    finally:
        torch.set_num_threads(default_threads)
    return rows


if __name__ == "__main__":
    main("masked_conv2d", run)
