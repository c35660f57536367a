"""Benchmark PixelCNN / Gated PixelCNN sampling: cached (fast=True) against naive (fast=False,
one full forward pass per pixel), 16 binary images of 28 x 28 from the default-size models
(15 layers, 64 channels), the samples checked equal.

The naive sampler is 784 forward passes, minutes long: it runs twice (the second timed) and
the cached one three times (median), interleaved. One thread: on this shared 2-core machine the
small per-pixel products of the cached sampler, and the naive sampler's convolutions, both
stall on a second thread whenever the neighbours are busy.
"""
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench._harness import main  # noqa: E402
from fastgen.models import GatedPixelCNN, PixelCNN  # noqa: E402


def _time(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _case(model_cls, n, shape, kwargs):
    torch.manual_seed(0)
    model = model_cls(input_shape=shape, **kwargs)
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    fast = lambda: model.sample(n, generator=gen())  # noqa: E731
    naive = lambda: model.sample(n, generator=gen(), fast=False)  # noqa: E731
    fast()  # warm-up
    t_fast, t_naive = [], []
    for _ in range(2):
        t, a = _time(fast)
        t_fast.append(t)
        t, b = _time(naive)
        t_naive.append(t)
    t, _ = _time(fast)
    t_fast.append(t)
    equal = torch.equal(a, b)
    tf, tn = statistics.median(t_fast), min(t_naive)
    case = f"{n} x {shape} {model_cls.__name__}"
    return [
        {"op": "sample", "case": case, "provider": "naive (forward pass per pixel)", "ms": tn * 1e3,
         "speedup": 1.0, "note": ""},
        {"op": "sample", "case": case, "provider": "cached (fast=True)", "ms": tf * 1e3, "speedup": tn / tf,
         "note": f"samples equal to naive: {equal}", "equal": equal},
    ]


def run(quick=False):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if quick:
            small = dict(hidden_channels=8, num_layers=2, head_channels=8)
            return (_case(PixelCNN, 2, (1, 5, 5), small)
                    + _case(GatedPixelCNN, 2, (1, 5, 5), dict(small, hidden_channels=6)))
        rows = _case(PixelCNN, 16, (1, 28, 28), {})
        if "--with-gated" in sys.argv or os.environ.get("FASTGEN_BENCH_GATED") == "1":
            rows += _case(GatedPixelCNN, 16, (1, 28, 28), {})
        return rows
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main("pixelcnn_sampling", run)
