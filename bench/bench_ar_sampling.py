"""Benchmark the fast (incremental) samplers of FVSBN, NADE and MADE against the naive one
(a full forward pass per pixel): 16 images of 28x28 binary pixels, default model sizes.

Both samplers read the same uniforms, so their outputs are also compared (they must be equal).
The naive sampler is slow (NADE's: minutes per call, being O(D^2 H) per image), so it runs
exactly once, between two runs of the fast one (fast, naive, fast; the fast time is their
mean) rather than through bench._harness.time_interleaved, whose calibration alone would call
it twice more. A full run takes several minutes.
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench._harness import main  # noqa: E402
from fastgen.models import FVSBN, MADE, NADE  # noqa: E402


def run(quick=False):
    shape, n = ((1, 8, 8), 4) if quick else ((1, 28, 28), 16)
    models = {"FVSBN": FVSBN(shape), "NADE": NADE(shape), "MADE": MADE(shape)}
    rows = []
    for name, model in models.items():
        torch.manual_seed(0)

        last = {}

        def sampler(fast, model=model, last=last):
            def run():
                last[fast] = model.sample(n, generator=torch.Generator().manual_seed(0), fast=fast)
            return run

        sampler(True)()                      # warm-up (allocator, lazy init)
        times = {"fast": [], "naive": []}
        for fast in (True, False, True):
            t0 = time.perf_counter()
            sampler(fast)()
            times["fast" if fast else "naive"].append(time.perf_counter() - t0)
        times = {k: sum(v) / len(v) for k, v in times.items()}
        same = torch.equal(last[True], last[False])
        case = f"{n} samples {shape[1]}x{shape[2]}"
        for prov in ("naive", "fast"):
            rows.append({"op": f"{name}.sample", "case": case, "provider": prov,
                         "ms": times[prov] * 1e3, "speedup": times["naive"] / times[prov],
                         "note": f"fast == naive samples: {same}; threads {torch.get_num_threads()}"})
    return rows


if __name__ == "__main__":
    main("ar_sampling", run)
