"""bench/quality.py in quick mode: it runs end to end, writes its JSON and prints its table."""
import json
import math
import os
import sys

import pytest

from conftest import ROOT

pytest.importorskip("sklearn")


def test_quality_quick(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    import quality

    out = tmp_path / "quality.json"
    quality.main(["--quick", "--models", "vae", "--anomaly-models", "vae", "--out", str(out),
                  "--samples", str(tmp_path / "samples")])
    results = json.loads(out.read_text())
    table = capsys.readouterr().out
    assert [r["model"] for r in results["nll"]] == ["vae"] and results["meta"]["quick"]
    vae = results["nll"][0]
    assert math.isfinite(vae["nll_nats"]) and vae["neg_elbo_nats"] > 0
    assert any(c["check"] == "vae IWAE >= ELBO" for c in results["checks"])
    assert 0 <= results["anomaly"][0]["auroc"] <= 1
    assert results["probe"][0]["features"].startswith("raw pixels") and len(results["probe"]) == 2
    assert len(results["gan_toy"]) == 3 and "GAN toy" in table and "vae" in table
    assert not os.path.exists(str(out) + ".tmp")
    assert os.listdir(tmp_path / "samples") == ["vae.png"] and results["gan"] == []
    sys.modules.pop("quality", None)


def test_order_checks_can_miss():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import quality
    finally:
        sys.path.pop(0)
    rows = [{"model": "independent-bernoulli", "nll_nats": 30.0}, {"model": "markov-chain", "nll_nats": 31.0},
            {"model": "nade", "nll_nats": 20.0}, {"model": "made", "nll_nats": 25.0}]
    checks = {c["check"]: c["holds"] for c in quality.order_checks(rows)}
    assert checks == {"nade ~ made": False, "independent-bernoulli > markov-chain": False, "markov-chain > nade/made": True}
