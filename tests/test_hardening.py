"""Hostile input: fuzzed spec parsers, injection strings in every spec field, links planted
across uploads, and tokens kept out of logs."""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlapp.config import ServerSettings
from dlapp.data.workspace import extract_workspace
from dlapp.errors import DlappError, SpecError, WorkspaceError
from dlapp.spec import AppSpec, properties_to_dict

from inprocess import add_user, bearer, serve, submit

FUZZ = settings(max_examples=300, deadline=500, suppress_health_check=[HealthCheck.too_slow])


# -- fuzzing the parsers: only clean errors, never a crash or a hang -------------------------


@FUZZ
@given(st.text(max_size=400))
def test_yaml_parser_fails_only_cleanly(text: str) -> None:
    try:
        AppSpec.from_yaml(text)
    except SpecError as exc:
        assert exc.message


@FUZZ
@given(st.text(max_size=400))
def test_properties_parser_fails_only_cleanly(text: str) -> None:
    try:
        properties_to_dict(text)
    except SpecError as exc:
        assert exc.message


SPEC_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    [
        "name",
        "queue",
        "image",
        "runtime",
        "workspace",
        "entry",
        "resources",
        "num_containers",
        "env",
        "inputs",
        "outputs",
        "max_runtime",
        "priority",
        "nodes",
        "bogus",
    ]
)


@FUZZ
@given(st.dictionaries(KEYS, SPEC_VALUES, max_size=8))
def test_structured_specs_fail_only_cleanly(data: dict[str, object]) -> None:
    try:
        spec = AppSpec.from_dict(data)
    except SpecError as exc:
        assert exc.message
    else:
        assert AppSpec.from_dict(spec.to_dict()) == spec


# -- injection strings reach the app as plain values ------------------------------------------


INJECTIONS = [
    "$(touch {m})",
    "`touch {m}`",
    "; touch {m}",
    "| touch {m}",
    "&& touch {m}",
    "'; touch {m}; '",
    '"; touch {m}; "',
    "\n touch {m}",
    "--output={m}",
    "-rf",
]


def test_injection_strings_in_args_and_env_run_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    values = [v.format(m=marker) for v in INJECTIONS]
    home = tmp_path / "home"
    with serve(ServerSettings(home=home, schedule_interval_s=0.05)) as api:
        token = add_user(api, home, "mallory")
        resp = submit(
            api,
            tmp_path,
            token,
            script='for a in "$@"; do printf "%s\\n" "$a"; done; printf "%s\\n" "$EVIL"\n',
            entry={"script": "run.sh", "args": values},
            env={"EVIL": values[0]},
        )
        assert resp.status_code == 201, resp.text
        app_id = resp.json()["id"]
        deadline = time.monotonic() + 20
        while (
            api.get(f"/api/v1/apps/{app_id}", headers=bearer(token)).json()["state"] != "FINISHED"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        out = api.get(f"/api/v1/apps/{app_id}/logs", headers=bearer(token)).text
    assert not marker.exists()
    printed = out.split("\n")
    for v in values:
        if "\n" not in v:
            assert v in printed, (v, out)


@pytest.mark.parametrize(
    "field,value",
    [
        ("name", "x; touch /tmp/pwned"),
        ("queue", "default; rm -rf /"),
        ("env", {"A=B; touch /tmp/x": "1"}),
        ("entry", {"script": "../../bin/sh"}),
        ("inputs", [{"url": "file:///tmp", "path": "../escape"}]),
    ],
)
def test_injection_strings_in_checked_fields_are_refused(field: str, value: object) -> None:
    data: dict[str, object] = {"name": "ok", "entry": {"script": "run.sh"}}
    data[field] = value
    with pytest.raises(SpecError):
        AppSpec.from_dict(data)


# -- a link planted by one upload cannot be used by another -----------------------------------


def _tarball(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            body = data.get(m.name)
            if body is not None:
                m.size = len(body)
            tar.addfile(m, io.BytesIO(body) if body is not None else None)
    return path


def test_a_link_planted_by_one_upload_is_not_followed_by_the_next(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    link = tarfile.TarInfo("planted")
    link.type = tarfile.SYMTYPE
    link.linkname = str(outside)
    first = _tarball(tmp_path / "a.tar.gz", [link], {})
    with pytest.raises(WorkspaceError, match="planted"):
        extract_workspace(first, tmp_path / "ws-a")
    # the second upload writes through the name the first one tried to plant
    f = tarfile.TarInfo("planted/owned.txt")
    second = _tarball(tmp_path / "b.tar.gz", [f], {"planted/owned.txt": b"x"})
    extract_workspace(second, tmp_path / "ws-b")
    assert (tmp_path / "ws-b" / "planted" / "owned.txt").read_bytes() == b"x"
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "ws-a").exists()


# -- tokens stay out of logs and answers ------------------------------------------------------


def test_tokens_never_appear_in_logs_or_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    caplog.set_level(logging.DEBUG)
    with serve(ServerSettings(home=home, schedule_interval_s=0.05)) as api:
        token = add_user(api, home, "erin")
        admin = (home / "admin.token").read_text().strip()
        answers = [
            api.get("/api/v1/me", headers=bearer(token)).text,
            api.get("/api/v1/admin/users", headers=bearer(admin)).text,
            api.get("/api/v1/admin/audit", headers=bearer(admin)).text,
            api.get("/api/v1/apps", headers=bearer(token + "x")).text,
        ]
    for secret in (token, admin):
        assert secret not in caplog.text
        assert all(secret not in a for a in answers)
    assert json.loads(answers[0])["name"] == "erin"


def test_clean_error_for_every_bad_spec_reaches_the_client(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with serve(ServerSettings(home=home)) as api:
        token = add_user(api, home, "frank")
        resp = api.post(
            "/api/v1/apps",
            headers=bearer(token),
            data={"spec": "{not json"},
            files={"workspace": ("w.tar.gz", b"", "application/gzip")},
        )
    assert resp.status_code == 400
    assert "spec is not valid JSON" in resp.json()["error"]["message"]


def test_an_unauthenticated_ray_is_refused_before_it_starts(tmp_path: Path) -> None:
    from dlapp.executor.ray import RayExecutor

    settings = ServerSettings(home=tmp_path)
    with pytest.raises(DlappError, match="RAY_AUTH_MODE=disabled"):
        RayExecutor(settings, environ={"RAY_AUTH_MODE": "disabled"})
    import ray

    assert not ray.is_initialized()
