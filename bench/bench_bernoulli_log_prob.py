"""Benchmark fastgen.ops.bernoulli_log_prob (forward and forward+backward).

Providers: the eager reference (-F.binary_cross_entropy_with_logits(..., reduction="none")
.sum(-1), what every binary model's likelihood runs), torch.compile(reference) (first-call
compile time reported) and each built fastgen impl (the Triton interpreter is a correctness
vehicle only, not timed). Cases: a binarized-MNIST batch (64 x 784: an autoregressive model's
loss), a VAE's IWAE-bound batch (k = 50 samples of 100 images, 5000 x 784, x broadcast over the
samples) and a bandwidth-bound size (16384 x 1024) with achieved GB/s of the minimal traffic as
a fraction of a STREAM triad measured in the same run: the forward without grad reads logits
and x (2n); forward+backward also writes the gradient (3n; the incoming gradient of a
.sum() is scaled in one more pass, 2n, which the reference pays too).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastgen  # noqa: E402
from bench._harness import compile_timed, mode_rows, main, triad_gbs  # noqa: E402
from fastgen import _ext  # noqa: E402
from fastgen.ops import bernoulli_log_prob  # noqa: E402
from fastgen.reference.bernoulli_log_prob import bernoulli_log_prob as reference  # noqa: E402


def _with_impl(fn, impl):
    def run(l, x):
        with fastgen.use_impl(impl):
            return fn(l, x)
    return run


def _case(label, shape, x_shape, repeats, triad, with_compile=True):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(shape, generator=g)).requires_grad_()
    x = torch.bernoulli(torch.full(x_shape, 0.15), generator=g)
    ref_fn = lambda l, xx: reference(l, xx.expand(l.shape))  # noqa: E731
    providers, compile_s = {"eager reference": ref_fn}, None
    if with_compile:
        providers["torch.compile(reference)"], compile_s = compile_timed(ref_fn, logits, x, backward=True)
    if _ext.AVAILABLE:
        providers["fastgen cpp"] = _with_impl(bernoulli_log_prob, "cpp")

    def forward(fn):
        def run():
            with torch.no_grad():
                fn(logits, x)
        return run

    def forward_backward(fn):
        def run():
            fn(logits, x).sum().backward()
            logits.grad = None
        return run

    n = logits.numel()
    return mode_rows("bernoulli_log_prob", label, (("fwd", forward, 2 * n), ("fwd+bwd", forward_backward, 3 * n)),
                     providers, repeats, triad=triad, element_size=logits.element_size(), compile_s=compile_s)


def run(quick=False):
    if quick:
        return _case("8x16", (8, 16), (8, 16), repeats=2, triad=None, with_compile=False)
    triad = triad_gbs()
    rows = _case("MNIST batch 64x784", (64, 784), (64, 784), repeats=9, triad=None)
    rows += _case("IWAE k=50 x 100 images x 784", (50, 100, 784), (100, 784), repeats=7, triad=None)
    rows += _case("16384x1024", (16384, 1024), (16384, 1024), repeats=5, triad=triad)
    rows.append({"op": "stream", "case": "triad 3x128 MiB", "provider": "torch.add(out=)",
                 "ms": None, "note": f"{triad:.1f} GB/s"})
    return rows


if __name__ == "__main__":
    main("bernoulli_log_prob", run)
