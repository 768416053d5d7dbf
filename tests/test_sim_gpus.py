"""The simulator on GPU sharing: traces with fractional GPUs (``gpu_milli`` or a fractional
``num_gpus``) and GPU models, clusters with a model per node group and memory written as
Kubernetes does, and the report of unallocated and fragmented GPU share."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from dlapp.cli import main as cli
from dlapp.scheduler import parse_tree
from dlapp.sim import (
    ClusterSpec,
    SimInputError,
    SimOptions,
    SimResult,
    build_report,
    load_trace,
    simulate,
)
from dlapp.sim.trace import Trace, TraceJob

EXACT = SimOptions(cycle_s=0)
ONE_QUEUE = parse_tree({"queues": {"default": {"guaranteed": "100%"}}})


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def trace(*jobs: tuple[float, float, float] | tuple[float, float, float, tuple[str, ...]]) -> Trace:
    """Jobs as (submit, GPUs, duration[, models])."""
    built = [
        TraceJob(i, j[0], j[2], j[1], gpu_types=j[3] if len(j) > 3 else ())  # type: ignore[misc]
        for i, j in enumerate(jobs, 1)
    ]
    return Trace(tuple(sorted(built, key=lambda j: (j.submit, j.row))), "built")


def ends(result: SimResult) -> dict[int, float | None]:
    return {r.job.row: r.end for r in result.records}


# --- the trace -------------------------------------------------------------------------------


def test_alibaba_columns_read_as_fractions_models_cpus_and_memory(tmp_path: Path) -> None:
    rows = [
        {
            "name": "openb-pod-0001",
            "cpu_milli": 6000,
            "memory_mib": 12288,
            "num_gpu": 1,
            "gpu_milli": 460,
            "gpu_spec": "",
            "creation_time": 100,
            "deletion_time": 700,
            "scheduled_time": 100,
        },
        {
            "name": "openb-pod-0002",
            "cpu_milli": 88000,
            "memory_mib": 327680,
            "num_gpu": 8,
            "gpu_milli": 1000,
            "gpu_spec": "V100M16|V100M32",
            "creation_time": 0,
            "deletion_time": 1000,
            "scheduled_time": 40,
        },
    ]
    jobs = load_trace(write_csv(tmp_path / "pods.csv", rows)).jobs

    assert [(j.submit, j.duration, j.gpus, j.cpus, j.memory_mb, j.gpu_types) for j in jobs] == [
        (0, 960, 8, 88, 327680, ("V100M16", "V100M32")),
        (100, 600, 0.46, 6, 12288, ()),
    ]


def test_a_fractional_num_gpus_is_a_fraction_of_one_gpu(tmp_path: Path) -> None:
    rows = [{"submit": 0, "duration": 10, "num_gpus": 0.5, "gpu_type": "A100 H100"}]
    [job] = load_trace(write_csv(tmp_path / "t.csv", rows)).jobs

    assert (job.gpus, job.gpu_types) == (0.5, ("A100", "H100"))


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"num_gpus": 1.5}, "row 1: num_gpus '1.5': a fraction must be below 1"),
        ({"num_gpus": 0.0005}, "row 1: num_gpus '0.0005': a fraction of a GPU is given in th"),
        ({"num_gpus": 2, "gpu_milli": 500}, "gpu_milli '500' with 2 GPUs: a fraction is of one"),
        ({"num_gpus": 1, "gpu_milli": 1500}, "row 1: gpu_milli '1500' must be from 1 to 1000"),
    ],
)
def test_bad_gpu_amounts_in_a_trace_name_the_row(
    tmp_path: Path, row: dict[str, Any], problem: str
) -> None:
    path = write_csv(tmp_path / "t.csv", [{"submit": 0, "duration": 10, **row}])

    with pytest.raises(SimInputError) as err:
        load_trace(path)
    assert problem in err.value.message


# --- the cluster -----------------------------------------------------------------------------


def test_cluster_groups_carry_a_model_and_kubernetes_amounts() -> None:
    cluster = ClusterSpec.from_dict(
        [
            {"count": 2, "gpus": 8, "cpus": "96000m", "memory": "393216Mi", "model": "G2"},
            {"count": 1, "gpus": 2, "cpus": 104, "memory": "512Gi", "model": "T4", "name": "t"},
        ]
    )

    g2, t4 = cluster.groups
    assert (g2.cpus, g2.memory_mb, g2.model) == (96, 393216, "G2")
    assert (t4.memory_mb, t4.model) == (512 * 1024, "T4")
    assert {n.model for n in cluster.nodes()} == {"G2", "T4"}
    assert cluster.gpus_by_model() == {"G2": 16, "T4": 2}
    assert ClusterSpec.from_dict(cluster.to_dict()) == cluster


def test_bad_cluster_amounts_are_named() -> None:
    with pytest.raises(SimInputError) as err:
        ClusterSpec.from_dict([{"count": 1, "gpus": 8, "cpus": "lots", "model": "bad model"}])
    assert "cpus must be a non-negative number (or thousandths: 96000m), not 'lots'" in (
        err.value.message
    )


def test_a_node_list_csv_becomes_groups_of_alike_nodes(tmp_path: Path) -> None:
    rows = [
        {"sn": "n0", "cpu_milli": 96000, "memory_mib": 393216, "gpu": 8, "model": "G2"},
        {"sn": "n1", "cpu_milli": 96000, "memory_mib": 393216, "gpu": 8, "model": "G2"},
        {"sn": "n2", "cpu_milli": 104000, "memory_mib": 524288, "gpu": 2, "model": "T4"},
    ]
    cluster = ClusterSpec.from_yaml(write_csv(tmp_path / "nodes.csv", rows))

    assert [(g.count, g.gpus, g.cpus, g.model) for g in cluster.groups] == [
        (2, 8, 96, "G2"),
        (1, 2, 104, "T4"),
    ]


# --- the replay ------------------------------------------------------------------------------


def test_two_half_gpu_jobs_run_together_on_one_gpu() -> None:
    jobs = trace((0, 0.5, 100), (0, 0.5, 100))
    cluster = ClusterSpec.uniform(1, 1)

    shared = simulate(jobs, cluster, ONE_QUEUE, EXACT)
    rounded = simulate(jobs, cluster, ONE_QUEUE, SimOptions(cycle_s=0, round_fractions=True))

    assert ends(shared) == {1: 100, 2: 100}
    assert ends(rounded) == {1: 100, 2: 200}  # each takes the whole GPU
    hours = build_report(shared)["gpu_hours"]
    assert hours["asked"] == pytest.approx(100 / 3600, abs=0.05)
    assert hours["fractional_jobs"] == 2


def test_a_typed_job_waits_for_its_model_while_another_is_free() -> None:
    cluster = ClusterSpec.from_dict(
        [
            {"count": 1, "gpus": 1, "model": "A100", "name": "a"},
            {"count": 1, "gpus": 1, "model": "T4", "name": "t"},
        ]
    )
    jobs = trace((0, 1, 100, ("A100",)), (0, 1, 50, ("A100",)), (0, 1, 10))

    result = simulate(jobs, cluster, ONE_QUEUE, EXACT)

    assert ends(result) == {1: 100, 2: 150, 3: 10}


def test_a_job_for_a_model_the_cluster_lacks_is_dropped_saying_so() -> None:
    jobs = trace((0, 1, 100, ("H100",)))

    result = simulate(jobs, ClusterSpec.uniform(1, 8), ONE_QUEUE, EXACT)

    [dropped] = result.dropped
    assert "asks for an H100; no node has one" in dropped.reason


def test_the_report_measures_unallocated_and_fragmented_gpus() -> None:
    # one 1-GPU node; a 0.75 job runs 0-100; the trace's other job asks for 0.5 and runs after:
    # while the 0.75 runs, the 0.25 left is free but fragmented (no job of the trace fits it)
    jobs = trace((0, 0.75, 100), (0, 0.5, 100))
    result = simulate(jobs, ClusterSpec.uniform(1, 1), ONE_QUEUE, EXACT)
    report = build_report(result)

    assert ends(result) == {1: 100, 2: 200}
    frag = report["fragmentation"]
    # 0-100: 0.25 free, fragmented for both kinds of job; 100-200: 0.5 free, fragmented for
    # the 0.75 kind (half the trace's jobs) only
    assert frag["unallocated_share_mean"] == pytest.approx((0.25 * 100 + 0.5 * 100) / 200)
    assert frag["fragmented_share_mean"] == pytest.approx((0.25 * 100 + 0.5 * 0.5 * 100) / 200)


def test_fgd_keeps_a_whole_gpu_that_pack_strands_in_pieces() -> None:
    # node a: 1 GPU, node b: 2 GPUs. pack puts the first half on a (fewest free GPUs),
    # stranding 0.1 there, and later pieces break b's GPUs, so the 1-GPU job waits; fgd
    # fills b's devices half by half and keeps b's second GPU whole for it
    cluster = ClusterSpec.from_dict(
        [
            {"count": 1, "gpus": 1, "model": "A100", "name": "a"},
            {"count": 1, "gpus": 2, "model": "A100", "name": "b"},
        ]
    )
    jobs = trace((0, 0.4, 1000), (0, 0.5, 1000), (10, 0.5, 1000), (20, 0.6, 1000), (30, 1, 100))

    fgd = simulate(jobs, cluster, ONE_QUEUE, EXACT)
    pack = simulate(jobs, cluster, ONE_QUEUE, SimOptions(cycle_s=0, placement="pack"))

    assert ends(fgd)[5] == 130  # at once
    assert ends(pack)[5] == 1100  # once the first jobs end
    assert (
        build_report(fgd)["fragmentation"]["fragmented_share_mean"]
        < (build_report(pack)["fragmentation"]["fragmented_share_mean"])
    )


def test_unknown_placement_in_options_is_refused() -> None:
    with pytest.raises(ValueError, match="placement 'random' is not one of fgd"):
        SimOptions(placement="random")


def test_cli_simulate_shares_or_rounds_fractions_as_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"submit": 0, "duration": 3600, "num_gpus": 0.5} for _ in range(2)]
    path = write_csv(tmp_path / "t.csv", rows)
    argv = ["simulate", str(path), "--nodes", "1", "--gpus-per-node", "1", "--cycle", "0"]

    assert cli.main([*argv, "--json"]) == 0
    shared = json.loads(capsys.readouterr().out)
    assert cli.main([*argv, "--json", "--round-fractions", "--placement", "pack"]) == 0
    rounded = json.loads(capsys.readouterr().out)
    assert cli.main(argv) == 0
    table = capsys.readouterr().out

    assert shared["span_h"] == 1.0 and rounded["span_h"] == 2.0  # shared: both at once
    assert shared["gpu_hours"] == rounded["gpu_hours"]  # what the jobs asked is the same
    assert shared["gpu_hours"]["asked"] == 1.0 and shared["gpu_hours"]["rounded_up"] == 2.0
    assert (
        "GPU-hours asked (fractions rounded up)" in table and "2 jobs ask for a fraction" in table
    )
    assert cli.main([*argv, "--placement", "random"]) == 2
