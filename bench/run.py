"""The fastgen bench suite: every bench/bench_*.py against the eager reference and
torch.compile(reference), in one process; a table on stdout, JSON under bench/results/.

    python bench/run.py [--quick] [--only NAME ...]
"""
import argparse
import glob
import importlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bench._harness import environment, format_table, report  # noqa: E402


def bench_names():
    return sorted(os.path.basename(p)[len("bench_"):-3] for p in glob.glob(os.path.join(HERE, "bench_*.py")))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not a measurement")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"run only these of {bench_names()}")
    args = parser.parse_args(argv)
    names = bench_names()
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {names}")
    print(f"fastgen bench suite: {environment()}")
    all_rows = []
    for name in args.only or names:
        module = importlib.import_module(f"bench.bench_{name}")
        t0 = time.perf_counter()
        rows = module.run(quick=args.quick)
        report(name if not args.quick else f"{name}.quick", rows)
        print(f"({name}: {time.perf_counter() - t0:.0f} s)")
        all_rows += rows
    print("\n## summary\n")
    print(format_table([r for r in all_rows if r.get("speedup") is not None and r.get("provider", "").startswith("fastgen")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
