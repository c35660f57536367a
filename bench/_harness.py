"""Benchmark harness for a noisy 2-core CPU: ratios measured side by side in one run.

Providers run interleaved (round-robin, order rotated each round) and each reports the median
of several repeats; memory-bound results are set against a STREAM triad, compute-bound ones
against a large sgemm, both measured in the same run.
"""
import datetime
import json
import math
import os
import platform
import statistics
import time

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _calibrate(fn, min_time):
    fn()  # warm-up (allocator, lazy init, caches)
    t0 = time.perf_counter()
    fn()
    t = max(time.perf_counter() - t0, 1e-7)
    return max(1, math.ceil(min_time / t))


def time_interleaved(providers, repeats=7, min_time=0.05):
    """providers: {name: zero-arg callable} -> {name: median seconds per call}."""
    names = list(providers)
    inner = {n: _calibrate(providers[n], min_time) for n in names}
    samples = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            fn, k = providers[n], inner[n]
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            samples[n].append((time.perf_counter() - t0) / k)
    return {n: statistics.median(s) for n, s in samples.items()}


def mode_rows(op, label, modes, providers, repeats, triad=None, element_size=4, compile_s=None, extra_note=None):
    """The rows of one case of an elementwise op: for each (mode, wrap, traffic) of modes, the
    providers ({name: fn}, wrap(fn) -> a zero-arg callable) timed interleaved, each row's speedup
    against "eager reference"; with triad (GB/s), the achieved rate of the minimal traffic
    (elements of element_size bytes) as a fraction of it; the first mode's torch.compile row gets
    the compile time; extra_note(name, times) -> str or None adds a provider's note."""
    rows = []
    for i, (mode, wrap, traffic) in enumerate(modes):
        times = time_interleaved({k: wrap(f) for k, f in providers.items()}, repeats=repeats)
        base = times["eager reference"]
        for name, t in times.items():
            row = {"op": op, "case": f"{label} {mode}", "provider": name, "ms": t * 1e3, "speedup": base / t}
            notes = []
            if triad is not None:
                gbs = traffic * element_size / t / 1e9
                row["gbs"] = gbs
                notes.append(f"{gbs:.1f} GB/s = {gbs / triad:.0%} of triad")
            extra = extra_note(name, times) if extra_note is not None else None
            if extra:
                notes.append(extra)
            if name.startswith("torch.compile") and i == 0 and compile_s is not None:
                notes.append(f"first call {compile_s:.1f} s")
            if notes:
                row["note"] = "; ".join(notes)
            rows.append(row)
    return rows


def compile_timed(fn, *example_args, backward=False):
    """torch.compile(fn) and the seconds its first call took (compilation included). With
    backward=True the first call also back-propagates the sum of the outputs."""
    compiled = torch.compile(fn)
    t0 = time.perf_counter()
    out = compiled(*example_args)
    if backward:
        outs = out if isinstance(out, (tuple, list)) else (out,)
        sum(o.float().sum() for o in outs if o.requires_grad).backward()
    return compiled, time.perf_counter() - t0


def triad_gbs(n=1 << 25, repeats=5, allocations=3):
    """STREAM triad a = b + s*c on float32 arrays of n elements (default 128 MiB each, well
    beyond the caches), GB/s counting the 3 arrays once each: the best over repeats and over a
    few fresh allocations, as STREAM reports its best rate. On these machines the rate depends on
    where the arrays land (one allocation ran at 51 GB/s, the next at 84), and a low yardstick
    would flatter the kernels measured against it."""
    best = 0.0
    for _ in range(allocations):
        a, b, c = torch.empty(n), torch.zeros(n).add_(1.0), torch.zeros(n).add_(2.0)
        fn = lambda: torch.add(b, c, alpha=3.0, out=a)  # noqa: E731
        fn()  # a's pages first touched outside the timing
        t = min(time_interleaved({"triad": fn}, repeats=1, min_time=0.2)["triad"] for _ in range(repeats))
        best = max(best, 3 * n * 4 / t / 1e9)
        del a, b, c
    return best


def sgemm_rates(n=2048, repeats=5):
    """GFLOP/s of a large float32 GEMM through each engine torch has on the CPU, interleaved:
    {"torch.mm": MKL's sgemm (what at::mm and F.linear run), "oneDNN": mkldnn::_linear_pointwise
    (the brgemm matmul fastgen's CPU kernels call; on AVX-512 CPUs about twice MKL's AVX2 path)}."""
    a, b, c = torch.rand(n, n), torch.rand(n, n), torch.empty(n, n)
    providers = {"torch.mm": lambda: torch.mm(a, b, out=c)}
    if torch.backends.mkldnn.is_available():
        providers["oneDNN"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    times = time_interleaved(providers, repeats=repeats, min_time=0.2)
    return {k: 2 * n ** 3 / t / 1e9 for k, t in times.items()}


def sgemm_gflops(n=2048, repeats=5):
    """The fastest large float32 GEMM on this machine, GFLOP/s (the max of sgemm_rates): the
    yardstick "fraction of sgemm" is measured against, so a kernel on oneDNN is not flattered by
    the slower MKL path."""
    return max(sgemm_rates(n, repeats).values())


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def format_table(rows):
    head = ("op", "case", "provider", "ms", "speedup", "note")
    body = [(str(r.get("op", "")), str(r.get("case", "")), str(r.get("provider", "")),
             _fmt(r.get("ms"), ".4f"), _fmt(r.get("speedup"), ".2f") + ("x" if r.get("speedup") else ""),
             str(r.get("note", ""))) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep] + [line(b) for b in body])


def cpu_model():
    """The CPU's model name as lscpu reports it (every number names its CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def vector_isa():
    """The widest x86 vector ISA the CPU has, and whether torch.mm's MKL may use it (MKL runs
    its AVX2 code on AMD CPUs even when they have AVX-512)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((l.split(":", 1)[1].split() for l in f if l.startswith("flags")), [])
    except OSError:
        flags = []
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"
    if "amx_tile" in flags:
        isa += "+amx"
    return isa


def environment():
    import fastgen

    info = fastgen.build_info()
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model(),
            "isa": vector_isa(), "fastgen_cpu_capability": info.get("cpu_capability"),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def report(name, rows, out_dir=RESULTS):
    """Print rows as a table and write them to bench/results/<name>.json (atomically)."""
    print(f"\n## {name}\n")
    print(format_table(rows))
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"name": name, "environment": environment(), "rows": rows}, f, indent=1)
    os.replace(tmp, path)
    return path


def main(name, run):
    """A bench script's command line: `python bench/bench_NAME.py [--quick]`. A quick (smoke) run
    reports to NAME.quick.json (gitignored), never over the measured NAME.json."""
    import sys

    quick = "--quick" in sys.argv
    return report(f"{name}.quick" if quick else name, run(quick=quick))
