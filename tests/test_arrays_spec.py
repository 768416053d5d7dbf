"""Arrays and sweeps in the spec (pure): Slurm's --array grammar and its refusals, a sweep's
combinations and refusals, a member's env, member names, and the running limit's holds."""

from __future__ import annotations

import pytest

from dlapp.arrays import (
    member_env,
    members,
    parse_array,
    running_limit,
    split_member,
)
from dlapp.errors import SpecError
from dlapp.scheduler.arrays import hold_over_limits
from dlapp.spec import AppSpec

BASE = {"name": "t", "entry": {"script": "run.sh"}}


@pytest.mark.parametrize(
    ("text", "indices", "limit"),
    [
        ("0-3", (0, 1, 2, 3), None),
        ("0-999%50", tuple(range(1000)), 50),
        ("1,3,5", (1, 3, 5), None),
        ("0-20:5", (0, 5, 10, 15, 20), None),
        ("7", (7,), None),
        ("2-3,9%1", (2, 3, 9), 1),
    ],
)
def test_slurm_array_syntax(text: str, indices: tuple[int, ...], limit: int | None) -> None:
    parsed = parse_array(text)
    assert (parsed.indices, parsed.limit) == (indices, limit)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no indices"),
        ("%5", "no indices"),
        ("0-", "'0-' is not an index, a range"),
        ("a-b", "'a-b' is not an index"),
        ("-1-3", "is not an index"),
        ("5-1", "the range '5-1' ends before it starts"),
        ("0-9:0", "the step of '0-9:0' must be at least 1"),
        ("1,2,1", "index 1 is given twice"),
        ("0-9%0", "running limit after % must be a whole number of at least 1, not '0'"),
        ("0-9%x", "not 'x'"),
        ("0-9%", "not ''"),
        ("0-2000000", "more than 1000000 members"),
    ],
)
def test_bad_array_syntax_names_the_problem(text: str, problem: str) -> None:
    with pytest.raises(SpecError, match="array") as exc:
        AppSpec.from_dict({**BASE, "array": text})
    assert problem in str(exc.value)


def test_an_array_round_trips_and_an_int_is_one_index() -> None:
    spec = AppSpec.from_yaml("name: t\nentry: {script: run.sh}\narray: 0-9%2\n")
    assert spec.array == "0-9%2" and spec.is_array
    assert AppSpec.from_dict(spec.to_dict()) == spec
    assert AppSpec.from_dict({**BASE, "array": 4}).array == "4"
    plain = AppSpec.from_dict(BASE)
    assert not plain.is_array and "array" not in plain.to_dict() and "sweep" not in plain.to_dict()


def test_a_sweep_is_the_cartesian_product_last_key_fastest() -> None:
    spec = AppSpec.from_yaml(
        "name: t\nentry: {script: run.sh}\nsweep: {lr: [1e-3, 1e-4], batch: [32, 64]}\n"
    )
    # YAML 1.1 reads 1e-3 as text: exponent forms are numbers here
    assert spec.sweep == {"lr": (0.001, 0.0001), "batch": (32, 64)}
    assert [m.values for m in members(spec.array, spec.sweep)] == [
        {"lr": 0.001, "batch": 32},
        {"lr": 0.001, "batch": 64},
        {"lr": 0.0001, "batch": 32},
        {"lr": 0.0001, "batch": 64},
    ]
    assert AppSpec.from_dict(spec.to_dict()) == spec
    assert spec.member_spec().sweep is None and spec.member_spec().array is None


def test_a_sweep_takes_a_running_limit_but_not_indices() -> None:
    spec = AppSpec.from_dict({**BASE, "sweep": {"seed": [1, 2, 3]}, "array": "%2"})
    assert running_limit(spec.array, spec.sweep) == 2
    assert [m.index for m in members(spec.array, spec.sweep)] == [0, 1, 2]
    with pytest.raises(SpecError, match="a sweep numbers its members itself"):
        AppSpec.from_dict({**BASE, "sweep": {"seed": [1, 2]}, "array": "0-1"})


@pytest.mark.parametrize(
    ("sweep", "problem"),
    [
        ({}, "must map parameter names to lists"),
        ([1, 2], "must map parameter names to lists"),
        ({"lr": []}, "lr must be a non-empty list"),
        ({"lr": 0.1}, "lr must be a non-empty list"),
        ({"lr": "abc"}, "lr must be a non-empty list"),
        ({"1lr": [1]}, "'1lr' is not a parameter name"),
        ({"l-r": [1]}, "'l-r' is not a parameter name"),
        ({"lr": [[1]]}, "lr's value [1] is not a string, number or boolean"),
        ({"lr": [None]}, "lr's value None is not"),
        ({"lr": ["a\nb"]}, "holds a line break"),
        ({"lr": [1, 1]}, "lr lists a value twice"),
        ({"lr": [1], "LR": [2]}, "'lr' and 'LR' would both be DLAPP_SWEEP_LR"),
        ({"a": list(range(1001)), "b": list(range(1000))}, "1001000 combinations"),
    ],
)
def test_bad_sweeps_are_refused_naming_the_problem(sweep: object, problem: str) -> None:
    with pytest.raises(SpecError) as exc:
        AppSpec.from_dict({**BASE, "sweep": sweep})
    assert problem in str(exc.value)


@pytest.mark.parametrize("name", ["DLAPP_ARRAY_INDEX", "DLAPP_ARRAY_ID", "DLAPP_SWEEP_LR"])
def test_a_spec_cannot_set_what_dlapp_tells_a_member(name: str) -> None:
    with pytest.raises(SpecError, match="set by dlapp"):
        AppSpec.from_dict({**BASE, "env": {name: "1"}})


def test_a_members_env() -> None:
    env = member_env("array_1_0002", 3, 8, {"lr": 0.001, "opt": "adam", "amp": True})
    assert env == {
        "DLAPP_ARRAY_ID": "array_1_0002",
        "DLAPP_ARRAY_INDEX": "3",
        "DLAPP_ARRAY_SIZE": "8",
        "DLAPP_SWEEP_LR": "0.001",
        "DLAPP_SWEEP_OPT": "adam",
        "DLAPP_SWEEP_AMP": "true",
        "DLAPP_SWEEP": '{"lr":0.001,"opt":"adam","amp":true}',
    }
    assert "DLAPP_SWEEP" not in member_env("array_1_0002", 0, 1, {})


def test_member_names() -> None:
    assert split_member("array_1700000000000_0003_17") == ("array_1700000000000_0003", 17)
    assert split_member("array_1700000000000_0003") is None
    assert split_member("application_1700000000000_0003") is None


def test_each_array_lets_on_only_as_many_members_as_it_has_room_for() -> None:
    line = [("a1", "A"), ("s1", None), ("a2", "A"), ("b1", "B"), ("a3", "A"), ("c1", "C")]
    held = hold_over_limits(line, running={"A": 1, "B": 2}, limits={"A": 3, "B": 2})
    # A: room for 2 (a1, a2), a3 waits; B is at its limit; C has none; s1 is no member
    assert set(held) == {"a3", "b1"}
    assert held["a3"].startswith("array limit 3 running")
    assert held["b1"].startswith("array limit 2 running")
    assert hold_over_limits(line, running={}, limits={}) == {}
