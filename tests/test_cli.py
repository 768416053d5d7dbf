"""The CLI through main(argv), against the real test server: launch, status, list, old names."""

from __future__ import annotations

import json
import re

import pytest

from dlapp.cli import main as cli
from dlapp.client import DlappClient

from conftest import AppFactory, wait_running

pytestmark = pytest.mark.cluster
APP_ID = re.compile(r"application_\d{13}_\d{4}")


def _launched_id(text: str) -> str:
    m = re.search(r"submitted: (application_\d+_\d+)", text)
    assert m, text
    return m.group(1)


def test_launch_wait_exits_0_on_success(
    use_server: str, make_app: AppFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = make_app("echo fine\n", name="ok", workspace={"path": "ws-ok", "exclude": ["*.tmp"]})
    (spec.parent / "ws-ok" / "junk.tmp").write_text("x")
    assert cli.main(["launch", str(spec), "--wait"]) == 0
    out = capsys.readouterr().out
    app_id = _launched_id(out)
    assert APP_ID.fullmatch(app_id)
    assert f"workspace path: {spec.parent / 'ws-ok'}" in out
    assert "exclude list: *.tmp" in out
    assert "workspace size:" in out and "in 1 files" in out
    assert f"API:       {use_server}/api/v1/apps/{app_id}" in out
    # what a browser opens (the API's URLs need a token: 401 there)
    assert f"its log:   {use_server}/dashboard/#/apps/{app_id}/logs/0/stdout" in out
    assert f"dlapp status {app_id}" in out
    assert "FINISHED SUCCEEDED" in out


def test_launch_wait_exits_1_on_failure(
    use_server: str, make_app: AppFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = make_app("echo failing; exit 4\n", name="bad")
    assert cli.main(["launch", str(spec), "--wait"]) == 1
    assert "FINISHED FAILED" in capsys.readouterr().out


def test_launch_follow_streams_the_log(
    use_server: str, make_app: AppFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = make_app("echo first; sleep 1; echo second\n", name="follow")
    assert cli.main(["launch", str(spec), "--follow"]) == 0
    out = capsys.readouterr().out
    assert out.index("first") < out.index("second") < out.index("FINISHED SUCCEEDED")


def test_launch_of_a_bad_spec_says_why(
    use_server: str, tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"  # type: ignore[operator]
    bad.write_text("name: x\nentry: {script: run.sh}\ngpu: 1\n")
    assert cli.main(["launch", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "unknown key 'gpu'" in err and "resources" in err


def test_status_json_shows_containers_with_node_and_gpu_ids(
    use_server: str, make_app: AppFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = make_app("echo x\n", name="js", resources={"cpus": 1, "memory": "256M", "gpus": 1})
    assert cli.main(["launch", str(spec), "--wait"]) == 0
    app_id = _launched_id(capsys.readouterr().out)
    assert cli.main(["status", app_id, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in (
        "id",
        "name",
        "user",
        "queue",
        "state",
        "final_status",
        "start_time",
        "finish_time",
    ):
        assert key in data
    assert data["id"] == app_id and data["user"] == "alice" and data["state"] == "FINISHED"
    (c,) = data["containers"]
    assert c["index"] == 0 and c["node"] and len(c["gpu_ids"]) == 1 and c["exit_code"] == 0


def test_reference_tool_names(
    use_server: str,
    make_app: AppFactory,
    client: DlappClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = make_app("echo started; sleep 60\n", name="ref")
    assert cli.launcher_main([str(spec)]) == 0
    app_id = _launched_id(capsys.readouterr().out)
    wait_running(client, app_id)
    assert cli.status_main([app_id]) == 0
    status = capsys.readouterr().out
    assert "RUNNING" in status and app_id in status
    dashboard = f"{use_server}/dashboard/#/apps/{app_id}"
    assert f"container 0 stdout: {dashboard}/logs/0/stdout" in status
    assert f"container 0 stderr: {dashboard}/logs/0/stderr" in status
    assert cli.list_main(["alice"]) == 0
    assert app_id in capsys.readouterr().out
    assert cli.softkill_main(["alice", app_id]) == 0
    assert "softkill sent" in capsys.readouterr().out
    assert client.wait(app_id, timeout_s=30)["final_status"] == "KILLED"
    assert cli.kill_main(["alice", app_id]) == 1  # already finished: a clear error
    assert "already finished" in capsys.readouterr().err


def test_list_json_and_filters(
    use_server: str, make_app: AppFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = make_app("true\n", name="listed")
    assert cli.main(["launch", str(spec), "--wait"]) == 0
    app_id = _launched_id(capsys.readouterr().out)
    assert cli.main(["list", "--all", "--json", "--user", "alice"]) == 0
    apps = json.loads(capsys.readouterr().out)
    assert app_id in [a["id"] for a in apps] and {a["user"] for a in apps} == {"alice"}
    assert cli.main(["list", "--json", "--user", "bob"]) == 0  # not alice's to see
    assert json.loads(capsys.readouterr().out) == []
    assert cli.main(["list", "--json", "--user", "nobody-else"]) == 1
    assert "no user 'nobody-else' on this server" in capsys.readouterr().err


def test_logs_command(
    use_server: str, make_app: AppFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = make_app("echo out-line; echo err-line >&2\n", name="logs")
    assert cli.main(["launch", str(spec), "--wait"]) == 0
    app_id = _launched_id(capsys.readouterr().out)
    assert cli.main(["logs", app_id]) == 0
    assert capsys.readouterr().out == "out-line\n"
    assert cli.main(["logs", app_id, "--stderr"]) == 0
    assert "err-line" in capsys.readouterr().out
    assert cli.main(["logs", app_id, "--container", "5"]) == 1
    assert "containers 0..0" in capsys.readouterr().err


def test_unknown_app_is_a_clear_error(use_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "application_1_9999"]) == 1
    assert "no app application_1_9999" in capsys.readouterr().err


def test_an_array_on_the_cluster_tells_each_member_its_index_and_values(
    use_server: str, make_app: AppFactory, client: DlappClient, capsys: pytest.CaptureFixture[str]
) -> None:
    script = 'echo "$DLAPP_ARRAY_INDEX/$DLAPP_ARRAY_SIZE $DLAPP_SWEEP_SEED"\n'
    spec = make_app(script, name="arr", sweep={"seed": [7, 8]}, array="%1")
    assert cli.main(["launch", str(spec), "--wait"]) == 0
    m = re.search(r"submitted: (array_\d+_\d+), an array of 2 apps", capsys.readouterr().out)
    assert m
    for index, seed in ((0, 7), (1, 8)):
        member = client.get(f"{m.group(1)}_{index}")
        assert member["final_status"] == "SUCCEEDED", member
        assert client.logs(member["id"]) == f"{index}/2 {seed}\n"
