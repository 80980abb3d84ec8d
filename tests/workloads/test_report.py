"""`fabric report`: the table and every plot, from real short runs."""
from __future__ import annotations

import json
import sys

import pytest

import fabric
from fabric.cli import main
from fabric.workloads import train
from fabric.workloads.report import PlotsUnavailable, write_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def two_results(state_dir, tmp_path, seed):
    paths = []
    with fabric.Cluster.start(hosts=2, devices=2, device_size="16MiB", state_dir=state_dir):
        for mode in ("pooled", "replicated"):
            p = tmp_path / f"{mode}.json"
            train(hosts=2, mode=mode, steps=3, seed=seed, params="100k", state_dir=state_dir,
                  out=str(p))
            paths.append(str(p))
    return paths


def test_report_prints_the_table_and_renders_every_plot(two_results, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots"
    assert main(["report", two_results[0], "--compare", two_results[1], "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pooled x2" in text and "replicated x2" in text
    for row in ("step time, wall", "step time, emulated", "final loss", "weights memory",
                "locality: far", "p99.9"):
        assert row in text
    names = sorted(p.name for p in out.iterdir())
    assert names == ["latency_cdf.png", "locality.png", "loss.png", "memory.png",
                     "step_time.png"]
    for p in out.iterdir():
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, p


def test_report_without_matplotlib_still_prints_the_table(two_results, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # as if not installed
    results = [json.load(open(p)) for p in two_results]
    with pytest.raises(PlotsUnavailable, match=r"pip install \"cxl-fabric\[plot\]\""):
        write_plots(results, two_results, str(tmp_path / "x"))
    assert main(["report", two_results[0], "--out", str(tmp_path / "y")]) == 1
    cap = capsys.readouterr()
    assert "final loss" in cap.out and "cxl-fabric[plot]" in cap.err


def test_report_rejects_what_is_not_a_result(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": 7}')
    assert main(["report", str(bad)]) == 1
    assert main(["report", str(tmp_path / "missing.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("fabric: error:") for e in err)
