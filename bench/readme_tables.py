"""The README's measured numbers, generated from bench/results/*.json (never typed by hand, so
the tables and the JSON cannot disagree).

    python bench/readme_tables.py           # rewrite the generated blocks of README.md
    python bench/readme_tables.py --check   # exit 1 if README.md is not what the JSON says

A generated block sits between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->`; the
text around the blocks (what the numbers mean, what is missed and why) is written by hand.
"""
import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
README = os.path.join(os.path.dirname(HERE), "README.md")


def _load(name):
    path = os.path.join(RESULTS, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _where(env):
    """'AMD EPYC (avx512), 2 threads, torch 2.14.1+cu130, 2026-11-25' from a bench environment."""
    if not env:
        return "environment not recorded"
    cpu = env.get("cpu", "CPU not recorded (an AMD EPYC host, by the notes of that session)")
    isa = f" ({env['isa']})" if env.get("isa") else ""
    date = env.get("date") or env.get("start") or "?"
    return f"{cpu}{isa}, {env.get('threads', '?')} threads, torch {env.get('torch', '?')}, {date[:16]}"


def _ms(v):
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def reproduce():
    res = _load("reproduce")
    if not res or not res.get("models"):
        return "No model has been trained on MNIST yet (bench/results/reproduce.json is missing)."
    rows = []
    for name, e in res["models"].items():
        if e["finished"]:
            status = "met" if e["met"] else "missed"
        else:
            status = "met so far, training" if e["met"] else "training"
        rows.append([name, f"{e['paper']:.2f}", f"{e['test_nll']:.2f}", f"{e['best_val_nll']:.2f}",
                     f"≤ {e['target']}", status, f"{e['epochs']} (best {e['best_epoch']})",
                     f"{e['hours']:.1f}", f"{e['cpu']}, {e['threads']} thread(s)", e["test_eval"]])
    return _table(["model", "published", "fastgen (test)", "validation", "target", "status", "epochs",
                   "hours", "CPU", "test NLL"], rows)


def ops(names=("reparameterize", "gan_loss", "bernoulli_log_prob", "masked_linear", "masked_conv2d", "row_lstm_scan",
              "nade")):
    blocks = []
    for name in names:
        res = _load(name)
        if res is None:
            continue
        rows = [[r["case"], r["provider"], _ms(r["ms"]), f"{r['speedup']:.2f}×", r.get("note", "")]
                for r in res["rows"] if r.get("provider", "").startswith("fastgen")]
        blocks.append(f"**{name}** ({_where(res.get('environment'))})\n\n"
                      + _table(["case", "provider", "ms", "vs eager reference", "note"], rows))
    return "\n\n".join(blocks)


def models():
    res = _load("models")
    if res is None:
        return "bench/results/models.json is missing: run `python bench/run.py --only models`."
    rows = [[r["case"], r["provider"], _ms(r["ms"]), f"{r['speedup']:.2f}×", r.get("note", "")]
            for r in res["rows"]]
    head = f"({_where(res.get('environment'))})"
    if res.get("partial"):
        head += (f"\n\n**A partial run**: {res.get('how', '')}; "
                 f"missing: {', '.join(res.get('missing_models', []))}.")
    return head + "\n\n" + _table(["model, case", "provider", "ms", "vs reference-op model", "note"], rows)


def sampling():
    rows = []
    where = set()
    for name in ("pixelcnn_sampling", "ar_sampling"):
        res = _load(name)
        if res is None:
            continue
        where.add(_where(res.get("environment")))
        by_case = {}
        for r in res["rows"]:
            by_case.setdefault((r["op"], r["case"]), []).append(r)
        for (op, case), rs in by_case.items():
            naive = next((r for r in rs if r["provider"].startswith("naive")), None)
            for r in rs:
                if r is naive or naive is None:
                    continue
                equal = r.get("equal", "True" in r.get("note", "") or None)
                rows.append([op, case, _ms(naive["ms"] / 1000) + " s", _ms(r["ms"] / 1000) + " s",
                             f"{naive['ms'] / r['ms']:.1f}×", "yes" if equal else "not checked"])
    return "(" + "; ".join(sorted(where)) + ")\n\n" + _table(
        ["model", "case", "naive", "fast", "speed-up", "fast == naive"], rows)


def quality():
    res = _load("quality")
    if res is None:
        return ""
    rows = [[r["model"], f"{r['nll_nats']:.2f}", f"{r['parameters']:,}", r["epochs"], r["best_epoch"]]
            for r in res["nll"]]
    return _table(["model", "test NLL (nats)", "parameters", "epochs", "best epoch"], rows)


GENERATORS = {"reproduce": reproduce, "ops": ops, "models": models, "sampling": sampling, "quality": quality}


def render(text):
    def block(m):
        name = m.group(1)
        if name not in GENERATORS:
            raise SystemExit(f"README.md: unknown generated block {name!r}")
        return f"<!-- generated:{name} -->\n{GENERATORS[name]()}\n<!-- /generated:{name} -->"

    return re.sub(r"<!-- generated:(\w+) -->.*?<!-- /generated:\1 -->", block, text, flags=re.S)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date")
    args = p.parse_args(argv)
    with open(README) as f:
        text = f.read()
    new = render(text)
    if args.check:
        if new != text:
            print("README.md's generated tables differ from bench/results: run python bench/readme_tables.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        with open(README, "w") as f:
            f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
