"""Benchmark of fastgen.ops.row_lstm_scan and PixelRNN sampling (ratios in one run).

Cases: the scan forward+backward at B=16, h=64, 28x28 (eager loop reference, torch.compile of
it with its first-call compile time, the C++ kernel); the scan forward alone as a fraction of a
large sgemm's FLOP rate (2 * 4h * 3h * B * H * W flops for the state-to-state GEMMs), against the
fastest engine (oneDNN here) and, in the note, each other one (MKL's torch.mm);
PixelRNN(kind="row") 28x28 sampling, fast (pixel-by-pixel state) against naive (a full
forward pass per pixel). Run: python bench/run.py --only row_lstm_scan
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench._harness import compile_timed, main, sgemm_rates, time_interleaved  # noqa: E402

import fastgen  # noqa: E402
from fastgen import _ext  # noqa: E402
from fastgen.models import PixelRNN  # noqa: E402
from fastgen.ops import row_lstm_scan  # noqa: E402
from fastgen.reference.row_lstm_scan import row_lstm_scan as reference  # noqa: E402

OP = "row_lstm_scan"


def _inputs(B, h, H, W):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 4 * h, H, W, generator=g).requires_grad_()
    w = (torch.randn(4 * h, h, 3, generator=g) / (3 * h) ** 0.5).requires_grad_()
    b = torch.randn(4 * h, generator=g).requires_grad_()
    return x, w, b


def _fwd_bwd(fn, x, w, b, grad):
    def run():
        x.grad = w.grad = b.grad = None
        fn(x, w, b).backward(grad)
    return run


def _cpp(x, w, b):
    with fastgen.use_impl("cpp"):
        return row_lstm_scan(x, w, b)


def scan_rows(quick):
    B, h, H, W = (2, 8, 6, 6) if quick else (16, 64, 28, 28)
    case = f"B={B} h={h} {H}x{W}"
    x, w, b = _inputs(B, h, H, W)
    grad = torch.randn(B, h, H, W)
    rows = []
    providers = {"eager reference": _fwd_bwd(reference, x, w, b, grad)}
    if not quick:  # compiling the 28-row loop takes minutes here
        compiled, compile_s = compile_timed(reference, x, w, b, backward=True)
        providers["torch.compile(reference)"] = _fwd_bwd(compiled, x, w, b, grad)
    if _ext.AVAILABLE:
        providers["fastgen cpp"] = _fwd_bwd(_cpp, x, w, b, grad)
    t = time_interleaved(providers, repeats=3 if quick else 7)
    base = t["eager reference"]
    for name, sec in t.items():
        note = f"first call (compile) {compile_s:.1f} s" if name.startswith("torch.compile") else ""
        if name == "fastgen cpp" and "torch.compile(reference)" in t:
            note = f"{t['torch.compile(reference)'] / sec:.2f}x torch.compile"
        rows.append(dict(op=OP, case=case + " fwd+bwd", provider=name, ms=sec * 1e3, speedup=base / sec, note=note))

    # forward alone against a large sgemm measured now
    flops = 2 * (4 * h) * (3 * h) * B * H * W
    xd, wd, bd = x.detach(), w.detach(), b.detach()
    fwd = {"eager reference": lambda: reference(xd, wd, bd)}
    if _ext.AVAILABLE:
        fwd["fastgen cpp"] = lambda: _cpp(xd, wd, bd)
    rates = sgemm_rates(512 if quick else 2048)  # every engine: the yardstick is the fastest
    best = max(rates, key=rates.get)
    t = time_interleaved(fwd, repeats=3 if quick else 7)
    for name, sec in t.items():
        rate = flops / sec / 1e9
        others = "".join(f"; {100 * rate / g:.0f}% of {k}'s {g:.0f}" for k, g in rates.items() if k != best)
        rows.append(dict(op=OP, case=case + " fwd", provider=name, ms=sec * 1e3,
                         speedup=t["eager reference"] / sec,
                         note=f"{rate:.1f} GFLOP/s = {100 * rate / rates[best]:.0f}% of sgemm "
                              f"{rates[best]:.0f} GFLOP/s ({best}){others}"))
    return rows


def sampling_rows(quick):
    shape = (1, 8, 8) if quick else (1, 28, 28)
    n = 4
    torch.manual_seed(0)
    model = PixelRNN(shape, kind="row", hidden_channels=32, num_layers=2)
    providers = {"naive": lambda: model.sample(n, generator=torch.Generator().manual_seed(1), fast=False),
                 "fastgen fast": lambda: model.sample(n, generator=torch.Generator().manual_seed(1), fast=True)}
    same = torch.equal(providers["naive"](), providers["fastgen fast"]())
    t = time_interleaved(providers, repeats=2 if quick else 3, min_time=0.0)
    case = f"PixelRNN row {shape[1]}x{shape[2]} n={n} h=32 L=2"
    return [dict(op="pixelrnn_sample", case=case, provider=name, ms=sec * 1e3, speedup=t["naive"] / sec,
                 note=("samples equal naive" if same else "SAMPLES DIFFER") if name != "naive" else "")
            for name, sec in t.items()]


def run(quick=False):
    return scan_rows(quick) + sampling_rows(quick)


if __name__ == "__main__":
    main(OP, run)
