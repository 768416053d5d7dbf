"""bench/launch.py: its statistics, tables and ratios, and the bare-spawn peer for real.

The full benchmark (a Ray cluster with its dashboard, a dlapp server, dockerd, Slurm) is run by
hand (docs/benchmarks.md); these tests keep its pure parts and its harness honest, quickly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import launch
from peers.systems import (
    BareSpawn,
    BenchError,
    Peer,
    Sample,
    make_workspace,
    parse_stamp,
    slurm_state,
)

ADJTIMEX = """    mode:         0
-o  offset:       0 us
    status:       64 (UNSYNC)
    time.tv_sec:  1795748844
    time.tv_usec: 000123
    return value: 5 (clock not synchronized)
"""


def result(name: str, started: list[float], finished: list[float]) -> launch.Result:
    samples = [Sample(s, f) for s, f in zip(started, finished, strict=True)]
    return launch.Result(name, f"{name} for the test", samples)


def test_stamp_is_read_from_busybox_adjtimex() -> None:
    assert parse_stamp(ADJTIMEX) == pytest.approx(1795748844.000123)
    with pytest.raises(BenchError, match="no 'busybox adjtimex' time stamp"):
        parse_stamp("hello\n")


def test_stamp_in_nanosecond_mode() -> None:
    """A kernel clock in nanosecond mode (status bit 0x2000) prints nanoseconds as tv_usec."""
    nano = ADJTIMEX.replace("64 (UNSYNC)", "8256 (UNSYNC)").replace("000123", "574052424")
    assert parse_stamp(nano) == pytest.approx(1795748844.574052424)


def test_slurm_state_from_scontrol_line() -> None:
    line = "JobId=7 JobName=dlapp-bench UserId=root(0) JobState=COMPLETED Reason=None"
    assert slurm_state(line) == "COMPLETED"
    with pytest.raises(BenchError, match="no JobState"):
        slurm_state("slurm_load_jobs error: Invalid job id specified")


def test_ratios_are_dlapp_p50_over_each_peer_p50() -> None:
    results = {
        "dlapp-process": result("dlapp-process", [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]),
        "spawn": result("spawn", [0.01, 0.01, 0.01], [0.02, 0.02, 0.02]),
        "slurm": launch.Result("slurm", unavailable="sbatch not found"),
    }
    table = launch.ratios(results)
    assert table["dlapp-process"]["spawn"]["started"] == pytest.approx(200.0)
    assert table["dlapp-process"]["spawn"]["finished"] == pytest.approx(150.0)
    assert table["dlapp-process"]["slurm"] == {"started": None, "finished": None}
    assert "dlapp-docker" not in table  # not asked for: no column


def test_tables_show_figures_ratios_and_why_a_peer_is_missing() -> None:
    results = {
        "dlapp-process": result("dlapp-process", [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]),
        "spawn": result("spawn", [0.004, 0.005, 0.006], [0.01, 0.01, 0.01]),
        "ray-jobs": launch.Result("ray-jobs", unavailable="the job server refuses jobs"),
    }
    md = launch.render_markdown(results)
    assert "| dlapp-process | 2000 ms | 2900 ms | 3000 ms | 3900 ms | 3 |" in md
    assert "| spawn | 5 ms | 6 ms | 10 ms | 10 ms | 3 |" in md
    assert "| ray-jobs | not available: the job server refuses jobs |" in md
    assert "| spawn | 400.0x / 300.0x |" in md
    assert "| ray-jobs | - / - |" in md
    plain = launch.render_plain(results)
    assert "ray-jobs       not available: the job server refuses jobs" in plain
    assert "400.0x / 300.0x" in plain


def test_json_carries_samples_stats_and_reasons() -> None:
    results = {
        "dlapp-docker": result("dlapp-docker", [1.0, 3.0], [2.0, 4.0]),
        "docker-run": launch.Result("docker-run", unavailable="dockerd does not answer"),
    }
    data = json.loads(json.dumps(launch.to_json(results, {"cpus": 2}, runs=2)))
    assert data["systems"]["dlapp-docker"]["started"]["p50"] == 2.0
    assert data["systems"]["dlapp-docker"]["finished"]["samples"] == [2.0, 4.0]
    assert data["systems"]["docker-run"] == {
        "describe": "",
        "available": False,
        "reason": "dockerd does not answer",
    }
    assert data["ratios_p50"]["dlapp-docker"]["docker-run"]["started"] is None


class NoStamp(Peer):
    name = "broken"

    def _run(self) -> tuple[str, float]:
        return "the app printed nothing useful\n", 0.0


def test_bare_spawn_measured_for_real_beside_a_peer_that_fails(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    results = launch.measure([BareSpawn(ws), NoStamp()], runs=2, warmup=1, progress=False)
    spawn = results["spawn"]
    assert spawn.unavailable is None and len(spawn.samples) == 2
    for s in spawn.samples:
        assert 0 < s.started_s <= s.finished_s < 5
    broken = results["broken"]
    assert broken.samples == []
    assert broken.unavailable is not None
    assert broken.unavailable.startswith("run 1 failed: BenchError: no 'busybox adjtimex'")


def test_main_prints_json_for_the_bare_spawn(capsys: pytest.CaptureFixture[str]) -> None:
    assert launch.main(["--systems", "spawn", "--runs", "2", "--warmup", "0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["runs"] == 2
    assert data["systems"]["spawn"]["available"] is True
    assert data["systems"]["spawn"]["started"]["n"] == 2
    assert data["machine"]["cpus"] >= 1


def test_main_names_an_unknown_system(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        launch.main(["--systems", "spawn,kubernetes"])
    assert "unknown system(s) kubernetes" in capsys.readouterr().err
