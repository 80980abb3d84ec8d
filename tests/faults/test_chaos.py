"""Chaos campaigns: the schedule is a function of the seed, the checker catches what it must,
and a real campaign under faults ends with zero violations and nothing left behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fabric.faults import chaos, kv
from fabric.errors import InvalidArgument

CI_CHAOS_S = float(os.environ.get("FABRIC_CHAOS_SECONDS", "20"))


def test_same_seed_same_schedule(seed):
    a = chaos.schedule(seed, 60, ("kill", "pause"), ["h0", "h1", "h2"])
    b = chaos.schedule(seed, 60, ("kill", "pause"), ["h0", "h1", "h2"])
    c = chaos.schedule(seed + 1, 60, ("kill", "pause"), ["h0", "h1", "h2"])
    assert a == b and a != c
    assert all(1.0 <= y["at_s"] - (x["at_s"] + x["for_s"]) <= 2.0 for x, y in zip(a, a[1:]))
    assert 15 <= len(a) <= 45


def test_message_and_partition_faults_in_the_schedule(seed):
    a = chaos.schedule(seed, 120, ("msg", "partition"), ["h0", "h1", "h2"])
    assert a == chaos.schedule(seed, 120, ("msg", "partition"), ["h0", "h1", "h2"])
    kinds = {f["kind"] for f in a}
    assert "partition" in kinds and kinds & {"drop", "delay", "duplicate", "reorder"}
    for f in a:
        if f["kind"] == "partition":
            assert f["target"] in ("h0", "h1", "h2") and "params" not in f
        else:
            assert f["target"] in ("manager", "h0", "h1", "h2")
            assert 0.1 <= f["params"]["p"] <= 0.5


def test_checker_treats_a_timeout_as_an_unknown_outcome(tmp_path):
    """A call that timed out (a dropped reply) may or may not have happened, like
    Jepsen's info ops: an error within its deadline is no violation, and a write that
    never returned may be read or not, for ever after."""
    v1 = kv._value(0, 3, 1)
    events = [
        {"op": "error", "host": "h0", "error": "FabricTimeout", "message": "no reply",
         "t0": 1.0, "t1": 3.0},                                          # ctl op, unknown
        {"op": "write_start", "host": "h0", "key": 3, "version": 1, "t": 4.0},
        {"op": "error", "host": "h0", "error": "FabricTimeout", "message": "no reply",
         "t0": 4.0, "t1": 6.0},                                          # the write, unknown
        {"op": "read", "host": "h0", "owner": "h0", "key": 3, "version": 0, "value": 0,
         "t0": 7.0, "t1": 7.1},                                          # not seen: legal
        {"op": "read", "host": "h0", "owner": "h0", "key": 3, "version": 1, "value": v1,
         "t0": 8.0, "t1": 8.1},                                          # seen: legal too
    ]
    res = kv.check(_log(tmp_path, events), ["h0"], timeout_ms=2000)
    assert res["violations"] == [] and res["errors"] == {"FabricTimeout": 2}


def _log(tmp_path, events):
    p = tmp_path / "h0.jsonl"
    p.write_text("".join(json.dumps(e) + "\n" for e in events))
    return [str(p)]


def test_checker_flags_a_stale_read_a_torn_value_and_an_untyped_error(tmp_path):
    v1 = kv._value(0, 3, 1)
    events = [
        {"op": "write_start", "host": "h0", "key": 3, "version": 1, "t": 1.0},
        {"op": "write_ack", "host": "h0", "key": 3, "version": 1, "t": 1.1},
        {"op": "read", "host": "h0", "owner": "h0", "key": 3, "version": 0, "value": 0,
         "t0": 2.0, "t1": 2.1},                                          # stale: 1 was acked
        {"op": "read", "host": "h0", "owner": "h0", "key": 3, "version": 1, "value": v1 ^ 1,
         "t0": 2.0, "t1": 2.1},                                          # torn value
        {"op": "read", "host": "h0", "owner": "h0", "key": 3, "version": 2, "value": 0,
         "t0": 2.0, "t1": 2.1},                                          # never written
        {"op": "untyped_error", "host": "h0", "error": "KeyError", "message": "x",
         "t0": 3.0, "t1": 3.1},
        {"op": "error", "host": "h0", "error": "FabricTimeout", "message": "slow",
         "t0": 4.0, "t1": 40.0},                                         # way past its deadline
        {"op": "read", "host": "h0", "owner": "h0", "key": 3, "version": 1, "value": v1,
         "t0": 5.0, "t1": 5.1},                                          # fine
        {"op": "read_torn", "host": "h0", "owner": "h0", "key": 3, "version": 1, "value": 5,
         "t0": 6.0, "t1": 6.1},                                          # torn, nothing in flight
        {"op": "write_start", "host": "h0", "key": 3, "version": 2, "t": 7.0},
        {"op": "read_torn", "host": "h0", "owner": "h0", "key": 3, "version": 2, "value": 5,
         "t0": 7.0, "t1": 7.05},                                         # torn while writing: legal
        {"op": "write_ack", "host": "h0", "key": 3, "version": 2, "t": 7.1},
    ]
    res = kv.check(_log(tmp_path, events), ["h0"], timeout_ms=2000)
    whats = sorted(v["what"] for v in res["violations"])
    assert whats == ["call exceeded its deadline", "stale or lost write", "stale or lost write",
                     "torn or foreign bytes", "torn or foreign bytes with no write in flight",
                     "untyped error escaped"]
    assert res["errors"] == {"KeyError": 1, "FabricTimeout": 1}


def test_bad_campaign_arguments():
    with pytest.raises(InvalidArgument, match="chaos faults"):
        chaos.run(1, 5, kinds=("melt",))
    with pytest.raises(InvalidArgument, match="workload"):
        chaos.run(1, 5, workload="nope")
    with pytest.raises(InvalidArgument, match="duration"):
        chaos.run(1, 0.1)


#: The kind-specific campaigns below are short: the one above draws every kind.
SHORT_CHAOS_S = min(CI_CHAOS_S, 6.0)


def test_campaign_under_every_kind_of_fault_has_no_violations(seed):
    res = chaos.run(seed, CI_CHAOS_S, kinds=chaos.CHAOS_KINDS)
    assert res["violation_count"] == 0, (f"FABRIC_TEST_SEED={seed}",
                                         json.dumps(res["violations"][:5], indent=1))
    assert sum(res["faults_injected"].values()) == len(res["schedule"]) >= CI_CHAOS_S / 3.5
    assert res["operations"].get("write_ack", 0) > 100 and res["operations"].get("read", 0) > 100
    assert len(res["recoveries"]) == len(res["schedule"])
    assert [e["action"] for e in res["fault_log"]].count("inject") == len(res["schedule"])


def test_campaign_under_message_faults_and_partitions_has_no_violations(seed):
    res = chaos.run(seed, SHORT_CHAOS_S, kinds=("msg", "partition"))
    assert res["violation_count"] == 0, (f"FABRIC_TEST_SEED={seed}",
                                         json.dumps(res["violations"][:5], indent=1))
    assert sum(res["faults_injected"].values()) == len(res["schedule"]) >= SHORT_CHAOS_S / 3.5
    assert res["operations"].get("write_ack", 0) > 100 and res["operations"].get("read", 0) > 100
    assert [e["action"] for e in res["fault_log"]].count("heal") == len(res["schedule"])


def test_training_under_faults_reaches_the_fault_free_loss(seed):
    res = chaos.run(seed, 3, workload="train", hosts=2)
    assert res["violation_count"] == 0, (f"FABRIC_TEST_SEED={seed}", res["violations"])
    assert res["final_loss"] == res["reference_loss"] and res["errors"] == {}
    assert sum(res["faults_injected"].values()) >= 1


@pytest.mark.slow
def test_long_campaign_from_the_cli(seed, tmp_path):
    out = tmp_path / "chaos.json"
    r = subprocess.run([sys.executable, "-m", "fabric", "chaos", "--seed", str(seed), "--duration",
                        "300", "--quiet", "--out", str(out)], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, (seed, r.stdout[-2000:], r.stderr[-2000:])
    assert json.loads(out.read_text())["violation_count"] == 0


def test_a_terminated_campaign_leaves_nothing(tmp_path):
    """SIGTERM mid-campaign: its cluster's state dir, its logs and its processes go.

    Only this campaign's files are looked at (other campaigns may run at once):
    its logs dir lives under its own TMPDIR, its state dir is the one whose
    cluster.json names the campaign's pid as owner."""
    import glob
    import signal
    import time
    import psutil
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    p = subprocess.Popen([sys.executable, "-m", "fabric", "chaos", "--seed", "1", "--duration", "60",
                          "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=env)

    def owned_state_dirs() -> list[str]:
        out = []
        for d in glob.glob("/dev/shm/cxl-fabric-chaos-*"):
            try:
                with open(os.path.join(d, "cluster.json")) as f:
                    if json.load(f).get("owner_pid") == p.pid:
                        out.append(d)
            except (OSError, ValueError):
                pass
        return out
    deadline = time.monotonic() + 60
    while not (glob.glob(str(tmp_path / "cxl-fabric-chaos-logs-*")) and owned_state_dirs()):
        assert time.monotonic() < deadline and p.poll() is None, "the campaign never started"
        time.sleep(0.05)
    state_dirs = owned_state_dirs()
    time.sleep(3)                                   # workers running, faults under way
    p.send_signal(signal.SIGTERM)
    p.wait(60)
    assert p.returncode == 130 and "Traceback" not in p.stderr, p.stderr
    time.sleep(1)
    left = [d for d in state_dirs if os.path.exists(d)]
    left += glob.glob(str(tmp_path / "cxl-fabric-chaos-*"))
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or ())
        if any(d in cmd for d in state_dirs):
            left.append(f"process {proc.pid}: {cmd}")
    assert not left, f"left behind: {left}"


def test_device_and_link_schedule_is_seeded_and_targets_the_right_names(seed):
    kw = dict(devices=["d0", "d1"], links=["h0-sw0", "sw0-d0"])
    kinds = ("kill", "device", "link", "poison", "slow")
    a = chaos.schedule(seed, 120, kinds, ["h0", "h1"], **kw)
    assert a == chaos.schedule(seed, 120, kinds, ["h0", "h1"], **kw)
    for f in a:
        if f["kind"] == "kill":
            assert f["target"] in ("h0", "h1") and "params" not in f
        elif f["kind"] in ("link-cut", "link-degrade"):
            assert f["group"] == "link" and f["target"] in kw["links"]
        else:
            assert f["kind"] in ("device-fail", "poison", "slow") and f["target"] in kw["devices"]
    # process-only campaigns draw exactly what they always drew
    assert chaos.schedule(seed, 60, ("kill", "pause"), ["h0"]) == \
        chaos.schedule(seed, 60, ("kill", "pause"), ["h0"], **kw)


def test_campaign_with_device_and_link_faults_has_no_violations(seed):
    res = chaos.run(seed, SHORT_CHAOS_S, kinds=("device", "link", "poison", "slow"))
    assert res["violation_count"] == 0, (f"FABRIC_TEST_SEED={seed}",
                                         json.dumps(res["violations"][:5], indent=1))
    assert sum(res["faults_injected"].values()) == len(res["schedule"]) >= 2
    assert set(res["faults_injected"]) <= {"device-fail", "link-cut", "link-degrade", "poison",
                                           "slow"}
    assert res["operations"].get("write_ack", 0) > 100
    known = {"DeviceFailed", "LinkDown", "PoisonError", "NodeUnavailable"}
    assert set(res["errors"]) <= known, res["errors"]
