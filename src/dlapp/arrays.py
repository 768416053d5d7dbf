"""App arrays and parameter sweeps: Slurm's ``--array`` grammar, a sweep's combinations, and
what each member is told (its environment).

An array is N ordinary apps made by one request, sharing one uploaded workspace. Its members
are numbered by the array's indices (``0-999``, ``1,3,5``, ``0-20:4``) or, for a sweep, by
their combination's place in the cartesian product (``0..K-1``, the sweep's keys in the order
written, the last one changing fastest). ``%N`` caps the members running at once.

An array of indices and a sweep together is refused: a sweep numbers its members itself. A
sweep may still carry a running limit alone: ``array: "%4"``.

Pure: imports nothing of the package but its errors.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dlapp.errors import SpecError

MAX_MEMBERS = 1_000_000  # no server takes more; max_array_size (a setting) is lower
MAX_INDEX = 10_000_000
_SWEEP_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# YAML 1.2's exponent floats, which PyYAML (YAML 1.1) reads as text: 1e-3 is a number here
_EXP_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_RANGE_RE = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")
SWEEP_ENV_PREFIX = "DLAPP_SWEEP_"
# what a member is told, beside the spec's own env (which may not set these)
ARRAY_ENV = ("DLAPP_ARRAY_ID", "DLAPP_ARRAY_INDEX", "DLAPP_ARRAY_SIZE", "DLAPP_SWEEP")
Scalar = str | int | float | bool


@dataclass(frozen=True)
class ArrayRange:
    """An ``--array`` value: the indices in the order given, and the running limit."""

    indices: tuple[int, ...]
    limit: int | None = None  # members RUNNING at once; None: no limit


def parse_array(text: str, *, with_sweep: bool = False) -> ArrayRange:
    """Slurm's ``--array`` syntax: ``0-999``, ``1,3,5``, ``0-20:4``, each with ``%N`` for at
    most N members running at once. With a sweep only ``%N`` may be given (the sweep numbers
    its members). A bad value raises ``SpecError`` naming the problem."""
    raw = str(text).strip()
    body, sep, limit_text = raw.partition("%")
    limit = None
    if sep:
        if not limit_text.isdigit() or int(limit_text) < 1:
            raise SpecError(
                f"array {raw!r}: the running limit after % must be a whole number of at least 1, "
                f"not {limit_text!r}"
            )
        limit = int(limit_text)
    if with_sweep:
        if body:
            raise SpecError(
                f"array {raw!r} with a sweep: a sweep numbers its members itself (0 to K-1, "
                "one per combination); give the array only a running limit, such as '%4'"
            )
        return ArrayRange((), limit)
    if not body:
        raise SpecError(
            f"array {raw!r}: no indices; write them as Slurm does: '0-999', '1,3,5', '0-20:4', "
            "each with an optional '%N' running limit"
        )
    indices: list[int] = []
    for part in body.split(","):
        m = _RANGE_RE.match(part.strip())
        if m is None:
            raise SpecError(
                f"array {raw!r}: {part.strip()!r} is not an index, a range 'A-B' or a stepped "
                "range 'A-B:S' (whole numbers from 0)"
            )
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        step = int(m.group(3)) if m.group(3) is not None else 1
        if last < first:
            raise SpecError(f"array {raw!r}: the range {part.strip()!r} ends before it starts")
        if step < 1:
            raise SpecError(f"array {raw!r}: the step of {part.strip()!r} must be at least 1")
        if last > MAX_INDEX:
            raise SpecError(f"array {raw!r}: an index may be at most {MAX_INDEX}")
        if len(indices) + (last - first) // step + 1 > MAX_MEMBERS:
            raise SpecError(f"array {raw!r}: more than {MAX_MEMBERS} members")
        indices.extend(range(first, last + 1, step))
    if len(set(indices)) != len(indices):
        twice = next(i for i in indices if indices.count(i) > 1)
        raise SpecError(f"array {raw!r}: index {twice} is given twice")
    return ArrayRange(tuple(indices), limit)


def check_sweep(sweep: object) -> dict[str, tuple[Scalar, ...]]:
    """A sweep: a mapping of parameter names (letters, digits, _) to non-empty lists of
    scalar values, each list without repeats; the names' upper-case forms distinct."""
    if not isinstance(sweep, Mapping) or not sweep:
        raise SpecError("it must map parameter names to lists of values, e.g. {lr: [1e-3, 1e-4]}")
    out: dict[str, tuple[Scalar, ...]] = {}
    seen: dict[str, str] = {}
    for key, values in sweep.items():
        name = str(key)
        if not _SWEEP_KEY_RE.match(name):
            raise SpecError(
                f"{name!r} is not a parameter name (letters, digits and _, not starting "
                "with a digit; it becomes DLAPP_SWEEP_<NAME>)"
            )
        upper = name.upper()
        if upper in seen:
            raise SpecError(f"{seen[upper]!r} and {name!r} would both be {SWEEP_ENV_PREFIX}{upper}")
        seen[upper] = name
        if not isinstance(values, Sequence) or isinstance(values, str) or not values:
            raise SpecError(f"{name} must be a non-empty list of values, not {values!r}")
        values = [float(v) if isinstance(v, str) and _EXP_FLOAT_RE.match(v) else v for v in values]
        for v in values:
            if not isinstance(v, str | int | float | bool) or v is None:
                raise SpecError(f"{name}'s value {v!r} is not a string, number or boolean")
            if isinstance(v, str) and any(c in v for c in "\n\r\x00"):
                raise SpecError(f"{name}'s value {v!r} holds a line break or NUL")
        if len({json.dumps(v) for v in values}) != len(values):
            raise SpecError(f"{name} lists a value twice")
        out[name] = tuple(values)
    size = 1
    for values in out.values():
        size *= len(values)
    if size > MAX_MEMBERS:
        raise SpecError(f"{size} combinations, more than {MAX_MEMBERS}")
    return out


def sweep_points(sweep: Mapping[str, Sequence[Scalar]]) -> list[dict[str, Scalar]]:
    """Every combination, the last key changing fastest."""
    keys = list(sweep)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*sweep.values())]


@dataclass(frozen=True)
class Member:
    index: int
    values: dict[str, Scalar]  # its sweep values ({} in a plain array)


def members(array: str | None, sweep: Mapping[str, Sequence[Scalar]] | None) -> list[Member]:
    """The members an array field and a sweep field make (none: ``[]``)."""
    if sweep:
        return [Member(i, p) for i, p in enumerate(sweep_points(sweep))]
    if array is None:
        return []
    return [Member(i, {}) for i in parse_array(array).indices]


def running_limit(array: str | None, sweep: Mapping[str, Any] | None) -> int | None:
    return None if array is None else parse_array(array, with_sweep=bool(sweep)).limit


def env_value(value: Scalar) -> str:
    """A sweep value as its env holds it: strings as written, numbers and booleans as JSON
    (``0.001``, ``1e-05``, ``32``, ``true``)."""
    return value if isinstance(value, str) else json.dumps(value)


def member_env(
    array_id: str, index: int, size: int, values: Mapping[str, Scalar]
) -> dict[str, str]:
    """A member's own environment: ``DLAPP_ARRAY_ID``, ``DLAPP_ARRAY_INDEX``,
    ``DLAPP_ARRAY_SIZE``; in a sweep ``DLAPP_SWEEP_<NAME>`` per parameter (the name upper-cased)
    and ``DLAPP_SWEEP``, the JSON object of its values under their names as written."""
    env = {
        "DLAPP_ARRAY_ID": array_id,
        "DLAPP_ARRAY_INDEX": str(index),
        "DLAPP_ARRAY_SIZE": str(size),
    }
    if values:
        env.update({SWEEP_ENV_PREFIX + k.upper(): env_value(v) for k, v in values.items()})
        env["DLAPP_SWEEP"] = json.dumps(dict(values), separators=(",", ":"))
    return env


_ARRAY_ID = r"array_\d+_\d+"  # array_<cluster start ms>_<seq> (store.arrays.next_array_id)
_ARRAY_ID_RE = re.compile(f"^{_ARRAY_ID}$")
_MEMBER_RE = re.compile(f"^({_ARRAY_ID})_(\\d+)$")


def split_member(name: str) -> tuple[str, int] | None:
    """``array_<ts>_<seq>_<index>`` (a member's name, as Slurm's ``<job>_<index>``) as
    ``(array id, index)``; anything else: None."""
    m = _MEMBER_RE.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def is_array_id(name: str) -> bool:
    return _ARRAY_ID_RE.match(name) is not None
