"""Benchmark the fast (incremental) samplers of FVSBN, NADE and MADE against the naive one
(a full forward pass per pixel): 16 images of 28x28 binary pixels, default model sizes.

Both samplers read the same uniforms, so their outputs are also compared (they must be equal).
The naive sampler is slow (seconds to a minute per call), so it runs once per round, interleaved
with the fast one (bench._harness.time_interleaved with repeats=1, min_time=0).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench._harness import report, time_interleaved  # noqa: E402
from fastgen.models import FVSBN, MADE, NADE  # noqa: E402


def run(quick=False):
    shape, n = ((1, 8, 8), 4) if quick else ((1, 28, 28), 16)
    models = {"FVSBN": FVSBN(shape), "NADE": NADE(shape), "MADE": MADE(shape)}
    rows = []
    for name, model in models.items():
        torch.manual_seed(0)

        def sampler(fast, model=model):
            return lambda: model.sample(n, generator=torch.Generator().manual_seed(0), fast=fast)

        same = torch.equal(sampler(True)(), sampler(False)())
        times = time_interleaved({"naive": sampler(False), "fast": sampler(True)}, repeats=1, min_time=0.0)
        case = f"{n} samples {shape[1]}x{shape[2]}"
        for prov in ("naive", "fast"):
            rows.append({"op": f"{name}.sample", "case": case, "provider": prov,
                         "ms": times[prov] * 1e3, "speedup": times["naive"] / times[prov],
                         "note": f"fast == naive samples: {same}; threads {torch.get_num_threads()}"})
    return rows


if __name__ == "__main__":
    report("ar_sampling", run(quick="--quick" in sys.argv))
