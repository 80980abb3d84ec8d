"""`fabric demo`: the training comparison a newcomer sees first, end to end through the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def test_demo_trains_both_modes_and_cleans_up(state_dir, tmp_path):
    env = dict(os.environ, FABRIC_STATE_DIR=state_dir)
    out = tmp_path / "demo"
    p = subprocess.run([sys.executable, "-m", "fabric", "demo", "--hosts", "2", "--steps", "4",
                        "--out", str(out), "--json"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout)
    assert res["schema"] == 1 and res["same_loss"] is True
    assert res["final_loss"]["pooled"] == res["final_loss"]["replicated"]
    assert res["weights_copies"]["replicated"] > 1.5 * res["weights_copies"]["pooled"]
    assert sorted(os.path.basename(r) for r in res["results"]) == ["pooled.json", "replicated.json"]
    assert all(os.path.exists(r) for r in res["results"])
    assert not os.path.exists(os.path.join(state_dir, "cluster.json"))   # the cluster stopped


def test_demo_flags_that_belong_to_the_sharing_demo_are_refused():
    p = subprocess.run([sys.executable, "-m", "fabric", "demo", "--size", "8MiB"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "--sharing" in p.stderr and "Traceback" not in p.stderr
