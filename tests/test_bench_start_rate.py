"""bench/start_rate.py: its rates from time stamps, its tables and ratios, Slurm's start times,
and the bare-spawn burst for real.

The full benchmark (a Ray cluster with its dashboard, a dlapp server, Slurm) is run by hand
(docs/benchmarks.md, "App starts per second"); these tests keep its pure parts honest, quickly.
"""

from __future__ import annotations

import json
import shutil
import sys
from datetime import datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import start_rate
from peers.systems import make_workspace
from start_rate import Burst, Result

T0 = 1_795_748_844.0


def burst(n: int, starts: list[float], **kw: object) -> Burst:
    """A burst submitted from T0 for 2 s, its starts given in seconds after T0."""
    args: dict[str, object] = {
        "system_starts": [],
        "all_finished": T0 + max(starts, default=0.0) + 0.5,
        "submit_calls": n,
    } | kw
    return Burst(n, T0, T0 + 2.0, [T0 + s for s in starts], **args)  # type: ignore[arg-type]


def test_start_rate_is_starts_over_last_start_since_first_submission() -> None:
    assert start_rate.start_rate([T0 + 0.5, T0 + 2.0, T0 + 1.0, T0 + 4.0], T0) == 1.0
    assert start_rate.start_rate([], T0) is None
    assert start_rate.start_rate([T0], T0) is None  # no time passed: no rate


def test_burst_figures() -> None:
    b = burst(4, [0.5, 1.0, 2.0, 4.0], system_starts=[T0 + 1.0, T0 + 2.0], gpus=2)
    assert b.submit_per_s == 2.0  # 4 submissions in 2 s
    assert b.starts_per_s == 1.0  # 4 starts, the last 4 s after the first submission
    assert b.system_starts_per_s == 1.0  # 2 starts by the system's clock, the last at 2 s
    assert b.free_starts_per_s == 2.0  # the first 2 (the GPUs) by 1.0 s
    assert b.last_start_s == 4.0
    assert b.all_finished_s == 4.5
    d = b.to_dict()
    assert d["starts_s"] == [0.5, 1.0, 2.0, 4.0]
    assert d["started"] == 4 and d["failed"] == 0 and d["gpus"] == 2
    no_gpus = burst(2, [1.0, 2.0])
    assert no_gpus.free_starts_per_s is None


def test_ratios_are_dlapp_starts_per_s_over_each_peer() -> None:
    results = {
        "dlapp": Result("dlapp", burst=burst(10, [float(i + 1) for i in range(10)])),  # 1/s
        "dlapp-array": Result("dlapp-array", burst=burst(10, [0.1 * (i + 1) for i in range(10)])),
        "slurm": Result("slurm", burst=burst(10, [0.5 * (i + 1) for i in range(10)])),  # 2/s
        "ray-jobs": Result("ray-jobs", unavailable="the job server refuses jobs"),
    }
    table = start_rate.ratios(results)
    assert table["dlapp"]["slurm"] == pytest.approx(0.5)
    assert table["dlapp-array"]["slurm"] == pytest.approx(5.0)
    assert table["dlapp"]["ray-jobs"] is None
    assert "dlapp-array" not in table["dlapp"]  # dlapp's rows are not peers of each other


def test_tables_show_figures_ratios_notes_and_why_a_system_is_missing() -> None:
    results = {
        "dlapp": Result("dlapp", burst=burst(4, [0.5, 1.0, 2.0, 4.0], gpus=2)),
        "slurm": Result(
            "slurm",
            burst=burst(4, [1.0, 2.0, 4.0, 8.0], system_starts=[T0 + 8.0], failed=1),
            note="the Slurm node declares 2 GPUs, not 16",
        ),
        "ray-jobs": Result("ray-jobs", unavailable="the job server refuses jobs"),
    }
    md = start_rate.render(results, markdown=True)
    assert "| dlapp | 4 | 2.0/s | 1.0/s | - | 2.0/s | 4.00 s | 4.50 s |" in md
    assert "| slurm | 4 (1 failed) | 2.0/s | 0.5/s | 0.1/s | - | 8.00 s | 8.50 s |" in md
    assert "| ray-jobs | not available: the job server refuses jobs |  |" in md
    assert "| slurm | 2.00x |" in md
    assert "| ray-jobs | - |" in md
    assert "slurm: the Slurm node declares 2 GPUs, not 16" in md
    plain = start_rate.render(results)
    assert "ray-jobs  not available: the job server refuses jobs" in plain
    assert plain.splitlines()[0].split() == [
        "system", "N", "submit/s", "starts/s", "system's", "view", "on", "free", "GPUs",
        "last", "start", "all", "finished",
    ]  # fmt: skip
    only_dlapp = start_rate.render({"dlapp": results["dlapp"]})
    assert "dlapp / peer" not in only_dlapp  # no peer: no ratio table


def test_json_carries_figures_and_reasons() -> None:
    results = {
        "dlapp": Result("dlapp", "dlapp for the test", burst(2, [1.0, 2.0])),
        "slurm": Result("slurm", unavailable="Slurm is not installed"),
    }
    data = json.loads(json.dumps(start_rate.to_json(results, {"cpus": 2}, n=2, gpus=16)))
    assert data["n"] == 2 and data["gpus"] == 16
    assert data["systems"]["dlapp"]["starts_per_s"] == 1.0
    assert data["systems"]["dlapp"]["available"] is True
    assert data["systems"]["slurm"] == {
        "describe": "",
        "available": False,
        "reason": "Slurm is not installed",
    }
    assert data["starts_per_s_ratios"] == {"dlapp": {"slurm": None}}


def test_slurm_states_and_start_times_from_scontrol() -> None:
    shown = "\n".join(
        [
            "JobId=7 JobName=x JobState=COMPLETED SubmitTime=2026-12-05T07:09:33 "
            "StartTime=2026-12-05T07:09:34 EndTime=2026-12-05T07:09:34",
            "JobId=8 JobName=x JobState=PENDING StartTime=Unknown",
            "JobId=9 JobName=other JobState=RUNNING StartTime=2026-12-05T07:00:00",
        ]
    )
    jobs = start_rate.slurm_start_times(shown, {"7", "8"})
    assert jobs == {
        "7": ("COMPLETED", datetime.fromisoformat("2026-12-05T07:09:34").timestamp()),
        "8": ("PENDING", None),
    }


def test_slurm_node_shape_from_sinfo() -> None:
    assert start_rate.slurm_node_shape("20 gpu:16\n") == (20, 16)
    assert start_rate.slurm_node_shape("2 gpu:2(S:0)\n") == (2, 2)
    assert start_rate.slurm_node_shape("4 gpu:a100:2,gpu:v100:1\n") == (4, 3)
    assert start_rate.slurm_node_shape("4 (null)\n8 gpu:4\n") == (12, 4)


class Broken(start_rate.System):
    name = "broken"

    def burst(self, n: int) -> Burst:
        raise RuntimeError("it fell over")


def test_bare_spawn_burst_measured_for_real_beside_a_system_that_fails(tmp_path: Path) -> None:
    if shutil.which("busybox") is None:
        pytest.skip("busybox is not installed")
    ws = make_workspace(tmp_path)
    results = start_rate.measure(
        [start_rate.SpawnBurst(ws, gpus=4), Broken()], n=12, gpus=4, progress=False
    )
    b = results["spawn"].burst
    assert b is not None and b.failed == 0 and len(b.starts) == 12 and b.gpus == 4
    assert all(b.submit_start <= s <= b.all_finished for s in b.starts)
    assert b.starts_per_s is not None and b.starts_per_s > 0
    assert results["broken"].burst is None
    assert results["broken"].unavailable == "RuntimeError: it fell over"


def test_main_prints_json_for_the_bare_spawn(capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("busybox") is None:
        pytest.skip("busybox is not installed")
    assert start_rate.main(["--systems", "spawn", "--n", "5", "--gpus", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n"] == 5 and data["gpus"] == 2
    assert data["systems"]["spawn"]["started"] == 5
    assert data["machine"]["cpus"] >= 1


def test_main_names_an_unknown_system(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        start_rate.main(["--systems", "spawn,kubernetes"])
    assert "unknown system(s) kubernetes" in capsys.readouterr().err
