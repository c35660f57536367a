"""Benchmark fastgen.ops.discriminator_loss / generator_loss (forward and forward+backward).

Providers: the eager reference, torch.compile(reference) (first-call compile time reported) and
each built fastgen impl (the Triton interpreter is a correctness vehicle only, not timed).
Cases: a dispatch-bound size (real and fake 128x32 each), the floor's size (1M logits each) and
a bandwidth-bound size (8M + 8M = 16M logits). For the large sizes, achieved GB/s of the minimal
traffic as a fraction of a STREAM triad measured in the same run: the forward without grad reads
the logits once (n elements); forward+backward reads the logits and writes their gradient (2n:
the minimum; loss.backward() brings an incoming gradient of exactly 1, so the fused backward hands
the saved gradient on without another pass).
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastgen  # noqa: E402
from bench._harness import compile_timed, mode_rows, main, triad_gbs  # noqa: E402
from fastgen import _ext  # noqa: E402
from fastgen.ops import discriminator_loss, generator_loss  # noqa: E402
from fastgen.reference import gan_loss as reference  # noqa: E402


def _loss_fns(which, kind):
    """(eager reference, fastgen op) as functions of (real, fake)."""
    if which == "discriminator":
        return (lambda r, f: reference.discriminator_loss(r, f, kind),
                lambda r, f: discriminator_loss(r, f, kind))
    return (lambda r, f: reference.generator_loss(f, kind), lambda r, f: generator_loss(f, kind))


def _with_impl(fn, impl):
    def run(r, f):
        with fastgen.use_impl(impl):
            return fn(r, f)
    return run


def _case(which, kind, shape, repeats, triad):
    g = torch.Generator().manual_seed(0)
    real = (3 * torch.randn(shape, generator=g)).requires_grad_()
    fake = (3 * torch.randn(shape, generator=g)).requires_grad_()
    ref_fn, op_fn = _loss_fns(which, kind)
    compiled, compile_s = compile_timed(ref_fn, real, fake, backward=True)
    providers = {"eager reference": ref_fn, "torch.compile(reference)": compiled}
    bce_name = None
    if which == "discriminator" and kind == "bce":  # the usual eager way, besides the reference
        bce_name = "eager F.binary_cross_entropy_with_logits"
        ones, zeros = torch.ones_like(real.detach()), torch.zeros_like(fake.detach())
        providers[bce_name] = lambda r, f: (F.binary_cross_entropy_with_logits(r, ones)
                                            + F.binary_cross_entropy_with_logits(f, zeros))
    if _ext.AVAILABLE:
        providers["fastgen cpp"] = _with_impl(op_fn, "cpp")
    inputs = (real, fake) if which == "discriminator" else (fake,)
    n = sum(t.numel() for t in inputs)

    def forward(fn):
        def run():
            with torch.no_grad():
                fn(real, fake)
        return run

    def forward_backward(fn):
        def run():
            fn(real, fake).backward()
            real.grad = fake.grad = None
        return run

    size = "x".join(map(str, shape))
    label = f"{which} {kind} {size}" + (" (each)" if which == "discriminator" else "")

    def vs_bce(name, times):
        if bce_name is not None and name != bce_name:
            return f"{times[bce_name] / times[name]:.2f}x vs eager BCE-with-logits"
        return None

    return mode_rows("gan_loss", label, (("fwd", forward, n), ("fwd+bwd", forward_backward, 2 * n)), providers,
                     repeats, triad=triad, element_size=real.element_size(), compile_s=compile_s, extra_note=vs_bce)


def run(quick=False):
    if quick:
        return _case("discriminator", "bce", (8, 16), repeats=2, triad=None)
    triad = triad_gbs()
    rows = _case("discriminator", "bce", (128, 32), repeats=9, triad=None)
    rows += _case("generator", "nonsaturating", (128, 32), repeats=9, triad=None)
    rows += _case("discriminator", "bce", (1024, 1024), repeats=7, triad=triad)
    rows += _case("discriminator", "hinge", (1024, 1024), repeats=7, triad=triad)
    rows += _case("generator", "nonsaturating", (1024, 1024), repeats=7, triad=triad)
    rows += _case("discriminator", "bce", (8192, 1024), repeats=5, triad=triad)
    rows.append({"op": "stream", "case": "triad 3x128 MiB", "provider": "torch.add(out=)",
                 "ms": None, "note": f"{triad:.1f} GB/s"})
    return rows


if __name__ == "__main__":
    main("gan_loss", run)
