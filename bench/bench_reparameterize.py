"""Benchmark fastgen.ops.reparameterize (z and KL, forward and forward+backward).

Providers: the eager reference, torch.compile(reference) (first-call compile time reported) and
each built fastgen impl. Large case: achieved GB/s (minimal traffic: forward reads mu, logvar,
eps and writes z; backward reads grad_z, mu, logvar, eps and writes grad_mu, grad_logvar) as a
fraction of a STREAM triad measured in the same run.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastgen  # noqa: E402
from bench._harness import compile_timed, mode_rows, main, triad_gbs  # noqa: E402
from fastgen import _ext  # noqa: E402
from fastgen.ops import reparameterize  # noqa: E402
from fastgen.reference.reparameterize import reparameterize as reference  # noqa: E402


def _case(rows, cols, repeats, triad, with_compile=True):
    g = torch.Generator().manual_seed(0)
    mu, logvar, eps = (torch.randn(rows, cols, generator=g) for _ in range(3))
    mu.requires_grad_(True)
    logvar.requires_grad_(True)
    gz, gk = torch.randn(rows, cols, generator=g), torch.randn(rows, generator=g)
    impls, compile_s = {"eager reference": reference}, None
    if with_compile:
        compiled, compile_s = compile_timed(reference, mu, logvar, eps, backward=True)
        impls["torch.compile(reference)"] = compiled
    if _ext.AVAILABLE:
        impls["fastgen cpp"] = reparameterize  # run under fastgen.use_impl("cpp"), see run()

    def forward(fn):
        def run():
            with torch.no_grad():
                fn(mu, logvar, eps)
        return run

    def forward_backward(fn):
        def run():
            z, kl = fn(mu, logvar, eps)
            torch.autograd.backward((z, kl), (gz, gk))
            mu.grad = logvar.grad = None
        return run

    n = rows * cols
    return mode_rows("reparameterize", f"{rows}x{cols}", (("fwd", forward, 4 * n), ("fwd+bwd", forward_backward, 10 * n)),
                     impls, repeats, triad=triad, element_size=mu.element_size(), compile_s=compile_s)


def run(quick=False):
    # The choice is made once for the whole run (as a user's FASTGEN_IMPL would), not per call;
    # the reference providers do not consult it.
    with fastgen.use_impl("cpp" if _ext.AVAILABLE else "reference"):
        return _run(quick)


def _run(quick):
    if quick:
        return _case(8, 16, repeats=2, triad=None, with_compile=False)
    triad = triad_gbs()
    rows = _case(128, 32, repeats=9, triad=None)
    rows += _case(16384, 1024, repeats=7, triad=triad)
    rows.append({"op": "stream", "case": "triad 3x128 MiB", "provider": "torch.add(out=)",
                 "ms": None, "note": f"{triad:.1f} GB/s"})
    return rows


if __name__ == "__main__":
    main("reparameterize", run)
