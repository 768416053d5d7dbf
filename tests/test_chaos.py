"""A short, bounded run of the chaos script (bench/chaos.py): apps stream in while a node is
lost, the server is killed with SIGKILL and restarted, and an app's process is killed; no
acknowledged app is lost and the running containers always match the store."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.cluster


def test_a_short_chaos_run_loses_no_app() -> None:
    argv = ["--minutes", "0.3", "--fault-every", "5", "--workers", "1", "--seed", "3"]
    argv += ["--faults", "node,server,process", "--min-faults", "2", "--drain", "120", "--json"]
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), *argv],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.stdout.strip(), run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["submitted"] > 0 and report["succeeded"] > 0, report
    assert sum(report["faults"].values()) >= 2, report  # faults were injected
    assert report["lost"] == 0, report
    assert report["unexpected"] == 0, report
    assert report["invariant_failures"] == [], report
    assert report["invariant_checks"] >= 2, report  # after the faults, and at the end
    assert run.returncode == 0, run.stderr[-3000:]
