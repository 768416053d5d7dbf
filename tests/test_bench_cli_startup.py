"""bench/cli_startup.py runs: its commands as processes against a live server (uvicorn in a
thread over the LocalExecutor), a few runs, and its table and JSON report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlapp.client import DlappClient
from dlapp.config import ServerSettings
from dlapp.data.workspace import pack_workspace
from dlapp.spec import AppSpec

from conftest import load_bench
from inprocess import admin_token, live

bench = load_bench("cli_startup")


def test_timing_and_ratios_against_the_floors() -> None:
    report = bench.Report("test machine", 3)
    report.timings = {
        bench.FLOOR: bench.Timing.of([0.02, 0.01, 0.03]),
        bench.HTTPX: bench.Timing.of([0.1, 0.1, 0.1]),
        "dlapp --version": bench.Timing.of([0.2, 0.1, 0.3]),
    }
    assert report.timings["dlapp --version"] == bench.Timing(0.2, 0.1, 0.3, 3)
    assert report.ratio("dlapp --version", bench.HTTPX) == pytest.approx(2.0)
    text = bench.format_table(report)
    assert "| `dlapp --version` | 200 | 100 | 300 | 10.00x | 2.00x |" in text
    assert report.to_dict()["commands"][bench.FLOOR]["x_python"] == pytest.approx(1.0)


def test_the_bench_times_status_against_a_live_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    with live(ServerSettings(home=home, schedule_interval_s=0.05)) as url:
        token = admin_token(home)
        ws = tmp_path / "ws"
        ws.mkdir()
        (ws / "run.sh").write_text("true\n")
        spec = AppSpec.from_dict(
            {"name": "t", "entry": {"script": "run.sh"}, "resources": {"memory": "64M"}}
        )
        with DlappClient(url, token) as c:
            app_id = c.submit(spec, pack_workspace(ws, tmp_path / "ws.tar.gz").path)["id"]
        argv = ["--server", url, "--token", token, "--app", app_id, "--runs", "2", "--json"]
        assert bench.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runs"] == 2
    assert set(report["commands"]) == {
        bench.FLOOR,
        bench.HTTPX,
        "dlapp --version",
        "dlapp status ID",
    }
    assert all(c["min_ms"] <= c["p50_ms"] <= c["max_ms"] for c in report["commands"].values())
