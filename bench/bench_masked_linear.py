"""Benchmark fastgen.ops.masked_linear at MADE shapes, forward and forward+backward.

Providers: the eager reference (F.linear on where(M, W, 0)), F.linear(x, W*M) (the issue's
baseline), torch.compile of the reference (first-call compile time reported) and each built
fastgen impl (through fastgen.nn.MaskedLinear, which precomputes the mask's block layout).
Cases: a degree-sorted MADE mask (a staircase, density ~1/2) for the first layer D -> H and the
output layer H -> D, and a dense mask (no blocks to skip: the overhead of the layout path).
Speedups are against the eager reference; the notes give the ratios against F.linear(x, W*M)
and its torch.compile (the issue's floor: forward+backward at D=784, H=2048, batch 256 >= 1.5x
the former and not slower than the latter) and the throughput as a fraction of a large sgemm
measured in the same run (dense FLOPs). Forward rows also run oneDNN's dense linear on W*M
(mkldnn::_linear_pointwise, the GEMM engine fastgen's CPU kernel calls per block; it has no
backward) and give each provider's ratio against it: F.linear's ratio to it is the engine's
share of the gain, fastgen's the engine's and the block skipping's together.
Quick mode: tiny sizes, no torch.compile.
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastgen  # noqa: E402
from bench._harness import compile_timed, main, sgemm_gflops, time_interleaved  # noqa: E402
from fastgen import _ext  # noqa: E402
from fastgen.nn import MaskedLinear  # noqa: E402
from fastgen.reference.masked_linear import masked_linear as reference  # noqa: E402


def made_mask(in_features, out_features, d, output_layer=False, seed=0):
    """Sorted MADE mask: inputs carry degrees 1..d (natural order), hidden units sorted random
    degrees in [1, d-1]; a hidden unit of degree m sees inputs <= m, an output of degree d'
    sees hidden units < d'."""
    g = torch.Generator().manual_seed(seed)
    if not output_layer:
        deg_in = torch.arange(1, in_features + 1)
        deg_out = torch.randint(1, d, (out_features,), generator=g).sort().values
        return deg_out[:, None] >= deg_in[None, :]
    deg_in = torch.randint(1, d, (in_features,), generator=g).sort().values
    deg_out = torch.arange(1, out_features + 1)
    return deg_out[:, None] > deg_in[None, :]


def _linear_wm(x, w, m, b):
    return F.linear(x, w * m, b)


def _onednn_linear_wm(x, w, m, b):
    return torch.ops.mkldnn._linear_pointwise(x, w * m, b, "none", [], "")


DNN = "oneDNN linear(x, W*M) (fwd only)"


def _case(name, x, layer, repeats, gflops, with_compile=True):
    w, m, b = layer.weight, layer.mask, layer.bias
    mf = m.to(w.dtype)
    gy = torch.randn(x.shape[0], w.shape[0])
    providers = {"eager reference": lambda: reference(x, w, m, b),
                 "F.linear(x, W*M)": lambda: _linear_wm(x, w, mf, b)}
    if with_compile:
        compiled, compile_s = compile_timed(_linear_wm, x, w, mf, b, backward=True)
        providers["torch.compile(F.linear(x, W*M))"] = lambda: compiled(x, w, mf, b)
    if _ext.AVAILABLE:
        def ours():
            with fastgen.use_impl("cpp"):
                return layer(x)
        providers["fastgen cpp"] = ours
    rows = []
    flops = 2 * x.shape[0] * w.numel()
    for mode, passes in (("fwd", 1), ("fwd+bwd", 3)):
        def wrap(fn, mode=mode):
            def run():
                if mode == "fwd":
                    with torch.no_grad():
                        fn()
                    return
                y = fn()
                y.backward(gy)
                x.grad = w.grad = b.grad = None
            return run
        provs = {k: wrap(f) for k, f in providers.items()}
        if mode == "fwd" and torch.backends.mkldnn.is_available() and w.dtype == torch.float32:
            provs[DNN] = wrap(lambda: _onednn_linear_wm(x, w, mf, b))
        times = time_interleaved(provs, repeats=repeats)
        base = times["eager reference"]
        for prov, t in times.items():
            note = f"{times['F.linear(x, W*M)'] / t:.2f}x vs F.linear(x, W*M)"
            if with_compile:
                note += f", {times['torch.compile(F.linear(x, W*M))'] / t:.2f}x vs its torch.compile"
            if DNN in times:
                note += f", {times[DNN] / t:.2f}x vs oneDNN dense"
            if gflops:
                note += f"; {passes * flops / t / 1e9 / gflops:.2f} of sgemm (dense flops)"
            if prov.startswith("torch.compile"):
                note += f"; first call {compile_s:.1f}s"
            rows.append({"op": "masked_linear", "case": f"{name} {mode}", "provider": prov,
                         "ms": t * 1e3, "speedup": base / t, "note": note})
    return rows


def run(quick=False):
    torch.manual_seed(0)
    d, h, n = (32, 64, 16) if quick else (784, 2048, 256)
    repeats = 3 if quick else 7
    gflops = None if quick else sgemm_gflops()
    x_in = torch.randn(n, d, requires_grad=True)
    x_hid = torch.randn(n, h, requires_grad=True)
    rows = []
    cases = [(f"MADE D={d}->H={h} N={n}", x_in, MaskedLinear(d, h, made_mask(d, h, d))),
             (f"MADE out H={h}->D={d} N={n}", x_hid, MaskedLinear(h, d, made_mask(h, d, d, True))),
             (f"dense D={d}->H={h} N={n}", x_in, MaskedLinear(d, h, torch.ones(h, d, dtype=torch.bool)))]
    for name, x, layer in cases:
        rows += _case(name, x, layer, repeats, gflops, with_compile=not quick)
    return rows


if __name__ == "__main__":
    main("masked_linear", run)
