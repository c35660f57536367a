"""The fastgen bench suite: every bench/bench_*.py against the eager reference and
torch.compile(reference), in one process; a table on stdout, JSON under bench/results/.

    python bench/run.py [--quick] [--only NAME ...] [--system-malloc]

Eager CPU times of large tensors are dominated by page faults on freshly mapped memory: glibc
returns every block over 32 MiB to the kernel on free and maps it anew on the next allocation.
The suite therefore re-runs itself with glibc told to keep freed memory for reuse
(MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_ large), which every provider enjoys alike: it is
what PyTorch's caching allocator does on a GPU and what its CPU tuning guide gets from
jemalloc/tcmalloc. --system-malloc measures with the default behaviour instead.
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
    parser.add_argument("--system-malloc", action="store_true", help="keep glibc's default allocator settings")
    args = parser.parse_args(argv)
    if not args.system_malloc and os.environ.get("MALLOC_MMAP_MAX_") != "0":
        env = dict(os.environ, MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(1 << 40))
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)
    names = bench_names()
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {names}")
    allocator = "system malloc" if args.system_malloc else "glibc keeping freed memory (MALLOC_MMAP_MAX_=0)"
    print(f"fastgen bench suite: {environment()}, allocator: {allocator}")
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
    if not args.quick:  # the README's tables are generated from the JSON just written
        from bench import readme_tables

        readme_tables.main([])
        print("README.md: measured tables regenerated from bench/results (python bench/readme_tables.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
