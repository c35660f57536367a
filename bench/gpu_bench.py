"""GPU bench (make gpu-check): every op, forward and forward+backward, for each implementation
that runs on CUDA tensors (fastgen "cuda", "triton", and "auto" where it takes the vendor path)
against the eager reference and torch.compile(reference), all measured in one run.

Yardsticks from the same run: HBM bandwidth by a triad (a = b + s c on 1 GiB arrays) for the
memory-bound ops (reparameterize, the GAN losses: achieved GB/s counting each tensor read or
written once, as % of the triad), and cuBLAS GEMM TFLOP/s (torch.mm, bf16 and fp32 without
TF32) for the GEMM-like ops (masked_linear, masked_conv2d: TFLOP/s of the useful, unmasked work).
Times: triton.testing.do_bench medians. Output: a table on stdout and
bench/results/gpu-<device>.json.

    python bench/gpu_bench.py [--quick] [--cpu-smoke]
--quick skips torch.compile; --cpu-smoke runs the same code on tiny CPU shapes (reference and
cpp only, wall-clock timing): a check of this script where there is no GPU, not a measurement.
"""
import argparse
import datetime
import json
import os
import re
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastgen  # noqa: E402
from fastgen.ops import (discriminator_loss, generator_loss, masked_conv2d, masked_linear,  # noqa: E402
                         reparameterize, row_lstm_scan)
from fastgen.reference import gan_loss as ref_gan  # noqa: E402
from fastgen.reference.masked_conv2d import build_mask, masked_conv2d as ref_conv  # noqa: E402
from fastgen.reference.masked_linear import masked_linear as ref_linear  # noqa: E402
from fastgen.reference.reparameterize import reparameterize as ref_rep  # noqa: E402
from fastgen.reference.row_lstm_scan import row_lstm_scan as ref_scan  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def bench_ms(fn, device):
    """Median milliseconds per call."""
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def triad_gbs(device, n):
    a, b, c = (torch.empty(n, device=device) for _ in range(3))
    b.normal_(), c.normal_()
    ms = bench_ms(lambda: torch.add(b, c, alpha=1.5, out=a), device)
    return 3 * n * 4 / (ms * 1e-3) / 1e9


def gemm_tflops(device, n, dtype):
    x, y = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n ** 3 / (bench_ms(lambda: torch.mm(x, y), device) * 1e-3) / 1e12


def staircase(o, i, device):
    deg = torch.randint(0, i, (o,), generator=torch.Generator().manual_seed(0)).sort().values
    return (deg[:, None] > torch.arange(i)[None, :]).to(device)


def cases(device, small):
    """name -> (ours(*inputs), reference(*inputs), inputs, kind, useful flops or bytes moved)."""
    s = (lambda big, tiny: tiny if small else big)
    dt = torch.float32
    out = {}
    n, d = s((65536, 512), (64, 16))
    rep_in = [torch.randn(n, d, device=device, dtype=dt) for _ in range(3)]
    out["reparameterize"] = (reparameterize, ref_rep, rep_in, "memory", 5 * n * d * 4)
    n = s(1 << 26, 4096)
    logits = [torch.randn(n, device=device, dtype=dt), torch.randn(n, device=device, dtype=dt)]
    out["discriminator_loss"] = (lambda r, f: discriminator_loss(r, f, "bce"),
                                 lambda r, f: ref_gan.discriminator_loss(r, f, "bce"), logits, "memory", 4 * n * 4)
    out["generator_loss"] = (lambda f: generator_loss(f, "nonsaturating"),
                             lambda f: ref_gan.generator_loss(f, "nonsaturating"), logits[1:], "memory", 2 * n * 4)
    b, i, o = s((4096, 784, 8000), (8, 20, 30))
    mask = staircase(o, i, device)
    lay = fastgen.ops.mask_layout(mask)
    lin_in = [torch.randn(b, i, device=device, dtype=dt), torch.randn(o, i, device=device, dtype=dt) * 0.05,
              torch.randn(o, device=device, dtype=dt)]
    out["masked_linear"] = (lambda x, w, bb: masked_linear(x, w, mask, bb, layout=lay),
                            lambda x, w, bb: ref_linear(x, w, mask, bb), lin_in, "gemm",
                            2 * b * int(mask.sum()))
    nb, c, hw, k = s((64, 128, 28, 7), (2, 4, 5, 3))
    cmask = build_mask(c, c, k, k, "B", 1, torch.bool, device)
    conv_in = [torch.randn(nb, c, hw, hw, device=device, dtype=dt), torch.randn(c, c, k, k, device=device, dtype=dt) * 0.05,
               torch.randn(c, device=device, dtype=dt)]
    out["masked_conv2d"] = (lambda x, w, bb: masked_conv2d(x, w, bb, "B"), lambda x, w, bb: ref_conv(x, w, bb, "B", 1),
                            conv_in, "gemm", 2 * nb * hw * hw * int(cmask.sum()))
    bb, h, hh, w = s((64, 64, 28, 28), (2, 3, 4, 5))
    scan_in = [torch.randn(bb, 4 * h, hh, w, device=device, dtype=dt) * 0.3,
               torch.randn(4 * h, h, 3, device=device, dtype=dt) * 0.1, torch.randn(4 * h, device=device, dtype=dt)]
    out["row_lstm_scan"] = (row_lstm_scan, ref_scan, scan_in, "scan", 2 * bb * hh * w * 4 * h * h * 3)
    return out


def forward_backward(fn, inputs):
    leaves = [t.detach().requires_grad_(True) for t in inputs]

    def run():
        y = fn(*leaves)
        ys = y if isinstance(y, tuple) else (y,)
        torch.autograd.grad(sum(t.float().sum() for t in ys), leaves)
    return run


def providers(name, ours, ref, device, quick):
    """label -> fastgen impl name (or None for the reference callables)."""
    out = {"eager reference": ("reference", ref)}
    if not quick:
        out["compile(reference)"] = (None, torch.compile(ref))
    impls = ["cuda", "triton", "auto"] if device == "cuda" else ["cpp"]
    for impl in impls:
        out[impl] = (impl, ours)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip torch.compile")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny CPU shapes: a check of this script")
    args = ap.parse_args()
    device = "cpu" if args.cpu_smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no GPU: nothing to bench")
        return 0
    small = args.cpu_smoke
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu-smoke"
    info = {"device": name, "torch": torch.__version__, "build": fastgen.build_info(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "triad_GBs": triad_gbs(device, 1 << (10 if small else 28)),
            "cublas_TFLOPs": {str(dt).split(".")[1]: gemm_tflops(device, 64 if small else 8192, dt)
                              for dt in (torch.float32, torch.bfloat16)}}
    print(f"{name}: triad {info['triad_GBs']:.0f} GB/s, GEMM " +
          ", ".join(f"{k} {v:.1f} TFLOP/s" for k, v in info["cublas_TFLOPs"].items()))
    rows = []
    for op, (ours, ref, inputs, kind, work) in cases(device, small).items():
        for label, (impl, fn) in providers(op, ours, ref, device, args.quick).items():
            row = {"op": op, "provider": label}
            try:
                with fastgen.use_impl(impl or "reference"):
                    f = fn if impl is None or impl == "reference" else ours
                    row["forward_ms"] = bench_ms(lambda: f(*inputs), device)
                    row["forward_backward_ms"] = bench_ms(forward_backward(f, inputs), device)
            except Exception as exc:  # noqa: BLE001  (a provider that fails is reported, not fatal)
                row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                rows.append(row)
                print(f"{op:20s} {label:20s} failed: {row['error']}")
                continue
            ms = row["forward_ms"]
            if kind == "memory":
                row["forward_GBs"] = work / (ms * 1e-3) / 1e9
                row["forward_pct_of_triad"] = 100 * row["forward_GBs"] / info["triad_GBs"]
                extra = f"{row['forward_GBs']:8.0f} GB/s ({row['forward_pct_of_triad']:.0f}% of triad)"
            elif kind == "gemm":
                row["forward_TFLOPs"] = work / (ms * 1e-3) / 1e12
                extra = f"{row['forward_TFLOPs']:8.2f} TFLOP/s (cuBLAS fp32 {info['cublas_TFLOPs']['float32']:.1f})"
            else:
                extra = ""
            rows.append(row)
            print(f"{op:20s} {label:20s} fwd {ms:9.3f} ms  fwd+bwd {row['forward_backward_ms']:9.3f} ms  {extra}")
    info["results"] = rows
    os.makedirs(RESULTS, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    path = os.path.join(RESULTS, f"gpu-{slug}.json")
    with open(path, "w") as fh:
        json.dump(info, fh, indent=1)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
