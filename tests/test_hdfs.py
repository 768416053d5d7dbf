"""``hdfs:///`` paths (the reference format's ``hdfs=/user/tony/...``): served by the server's
``hdfs_endpoint`` / ``hdfs_map`` over WebHDFS (fsspec's client: HTTP, no JVM) or another store,
and refused once, saying what to configure, by a server that serves none."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from dlapp.cli import main as cli
from dlapp.client import DlappClient
from dlapp.config import ServerSettings, load_server_settings
from dlapp.data import staging
from dlapp.data.locations import DataConfig, Profile, hdfs_routes, problem, url_problem
from dlapp.errors import DataError
from dlapp.spec import AppSpec
from spec_builders import REFERENCE_PROPERTIES
from webhdfs import WebHdfs, webhdfs

from inprocess import admin_token, live

INPUT = "/user/tony/caffe_test"
OUTPUT = "/user/tony/caffe_mnist_example_output"
START = """\
#!/bin/sh
mkdir -p output
ls data > output/listing.txt
cat data/*.txt > output/all.txt
echo "args: $@" >> output/all.txt
"""


@pytest.fixture
def namenode(tmp_path: Path) -> Iterator[WebHdfs]:
    with webhdfs(tmp_path / "hdfs") as w:
        (w.local(INPUT) / "sub").mkdir(parents=True)
        w.local(INPUT + "/a.txt").write_text("alpha\n")
        w.local(INPUT + "/b.txt").write_text("beta\n")
        w.local(INPUT + "/sub/c.bin").write_bytes(b"c" * 5000)
        yield w


def config_for(w: WebHdfs, cache_dir: str | None = None) -> DataConfig:
    """A server's data settings with ``hdfs_endpoint`` at ``w``; its profile names the user."""
    profile = Profile("namenode", "webhdfs", (w.endpoint + "/",), {"user": "dlapp"})
    return DataConfig(
        profiles=(profile,), hdfs_map=hdfs_routes(w.endpoint, {}), cache_dir=cache_dir
    )


def reference_app(root: Path) -> Path:
    """SEED.md's dl_app.properties, verbatim, beside its workspace."""
    ws = root / "user_dev_workspace"
    ws.mkdir(parents=True)
    (ws / "dl_app_start.sh").write_text(START)
    props = root / "dl_app.properties"
    props.write_text(REFERENCE_PROPERTIES)
    return props


# -- no hdfs_endpoint: one refusal that says what to configure ---------------------------------


def test_a_server_without_an_hdfs_endpoint_says_once_what_to_configure() -> None:
    spec = AppSpec.from_properties(REFERENCE_PROPERTIES)
    with pytest.raises(DataError) as info:
        staging.check_urls(spec, config=DataConfig())
    message = info.value.message
    assert message.count("hdfs_endpoint") == 1, message
    assert "pyarrow" not in message
    assert f"input hdfs://{INPUT}/*, output hdfs://{OUTPUT}:" in message
    assert "docs/data.md#hdfs" in message


def test_the_launcher_refuses_the_reference_spec_once_naming_the_setting(
    use_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.launcher_main([str(reference_app(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert err.count("hdfs_endpoint") == 1, err
    assert "pyarrow" not in err


def test_spec_check_says_hdfs_paths_need_a_configured_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["spec", "check", str(reference_app(tmp_path))]) == 0
    captured = capsys.readouterr()
    assert "hdfs_endpoint or hdfs_map" in captured.err
    assert "username=tony is ignored" in captured.err
    assert "note:" not in captured.out  # the YAML on stdout stays clean


def test_an_hdfs_url_with_a_namenode_but_no_client_says_how_to_get_one() -> None:
    why = url_problem("hdfs://namenode.lab.example:8020/user/tony/x", DataConfig()) or ""
    assert "dlapp[hdfs]" in why and "webhdfs://namenode:9870" in why


# -- hdfs_endpoint: WebHDFS ------------------------------------------------------------------


def test_the_reference_bindings_stage_in_and_out_through_webhdfs(
    namenode: WebHdfs, tmp_path: Path
) -> None:
    spec = AppSpec.from_properties(REFERENCE_PROPERTIES)
    config = config_for(namenode, cache_dir=str(tmp_path / "cache"))
    staging.check_urls(spec, config=config)
    ws = tmp_path / "ws"
    ws.mkdir()
    staging.stage_in(spec.inputs, ws, lambda line: None, config=config)
    assert (ws / "data" / "a.txt").read_text() == "alpha\n"
    assert (ws / "data" / "sub" / "c.bin").read_bytes() == b"c" * 5000
    (ws / "output").mkdir()
    (ws / "output" / "model.caffemodel").write_bytes(b"weights")
    staging.stage_out(spec.outputs, ws, lambda line: None, config=config)
    assert namenode.local(OUTPUT + "/model.caffemodel").read_bytes() == b"weights"
    ops = {op for op, _, _ in namenode.requests}
    assert {"LISTSTATUS", "OPEN", "CREATE", "RENAME"} <= ops
    assert {user for *_, user in namenode.requests} == {"dlapp"}  # the profile's options


def test_hdfs_map_serves_a_prefix_from_another_store(namenode: WebHdfs, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "tony").mkdir(parents=True)
    (mirror / "tony" / "x.txt").write_text("from the mirror")
    config = DataConfig(
        hdfs_map=hdfs_routes(namenode.endpoint, {"/user/": mirror.as_uri() + "/"}),
        file_roots=(str(mirror.resolve()),),
    )
    ws = tmp_path / "ws"
    ws.mkdir()
    spec = AppSpec.from_dict(
        {
            "name": "m",
            "entry": {"script": "run.sh"},
            "inputs": [
                {"url": "hdfs:///user/tony/x.txt", "path": "mine"},  # the longest prefix
                {"url": f"hdfs://{INPUT}/a.txt", "path": "other"},
            ],
        }
    )
    with pytest.raises(DataError) as info:  # /user/ is the mirror's, not the namenode's
        staging.check_urls(spec, config=config)
    assert info.value.message == f"input hdfs://{INPUT}/a.txt: nothing exists there"
    staging.stage_in(spec.inputs[:1], ws, lambda line: None, config=config)
    assert (ws / "mine" / "x.txt").read_text() == "from the mirror"
    assert not any(p.startswith("/user/") for _, p, _ in namenode.requests)


def test_an_hdfs_path_cannot_climb_out_of_its_mapped_prefix(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    config = DataConfig(
        hdfs_map=hdfs_routes(None, {"/user/": (tmp_path / "mirror").as_uri() + "/"}),
        file_roots=(str(tmp_path.resolve()),),
    )
    assert "'..'" in (problem("hdfs:///user/../secret.txt", config) or "")


def test_a_loopback_endpoint_is_served_only_because_an_admin_named_it(namenode: WebHdfs) -> None:
    served = DataConfig(hdfs_map=hdfs_routes(namenode.endpoint, {}))
    assert problem(f"hdfs://{INPUT}/a.txt", served) is None
    # the same store written by a user is the server itself: refused
    assert "loopback" in (problem(f"{namenode.endpoint}{INPUT}/a.txt", DataConfig()) or "")


def test_the_hdfs_settings_refuse_what_is_no_store_url() -> None:
    with pytest.raises(ValidationError, match="not a store URL"):
        ServerSettings(hdfs_endpoint="namenode:9870")
    with pytest.raises(ValidationError, match="not a store URL"):
        ServerSettings(hdfs_endpoint="hdfs:///user/")
    with pytest.raises(ValidationError, match="not an absolute HDFS path prefix"):
        ServerSettings(hdfs_map={"user/": "s3://bucket/user/"})
    with pytest.raises(ValidationError, match="credentials do not belong"):
        ServerSettings(hdfs_endpoint="webhdfs://hdfs:secret@namenode:9870")


def test_the_hdfs_settings_come_from_the_environment_too(tmp_path: Path) -> None:
    env = {
        "DLAPP_HDFS_ENDPOINT": "webhdfs://namenode.lab.example:9870",
        "DLAPP_HDFS_MAP": '{"/user/": "s3://lab-hdfs/user/"}',
    }
    s = load_server_settings(env=env, home=tmp_path)
    assert hdfs_routes(s.hdfs_endpoint, s.hdfs_map) == (
        ("/user/", "s3://lab-hdfs/user/"),
        ("/", "webhdfs://namenode.lab.example:9870/"),
    )


def test_the_hdfs_settings_travel_to_the_node(namenode: WebHdfs) -> None:
    config = config_for(namenode)
    assert DataConfig.from_dict(config.to_dict()) == config


def test_the_reference_app_runs_on_a_server_with_an_hdfs_endpoint(
    namenode: WebHdfs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    settings = ServerSettings(
        home=home,
        schedule_interval_s=0.05,
        hdfs_endpoint=namenode.endpoint,
        storage_profiles={
            "namenode": {"protocol": "webhdfs", "urls": [namenode.endpoint + "/"]}  # type: ignore[dict-item]
        },
    )
    props = reference_app(tmp_path / "app")
    with live(settings) as url:
        monkeypatch.setenv("DLAPP_SERVER", url)
        monkeypatch.setenv("DLAPP_TOKEN", admin_token(home))
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-client-config"))
        assert cli.launcher_main([str(props)]) == 0
        captured = capsys.readouterr()
        assert "username=tony, which dlapp ignores" in captured.err
        app_id = captured.out.split("submitted: ")[1].split()[0]
        with DlappClient(url, admin_token(home)) as client:
            final = client.wait(app_id, timeout_s=60)
    assert final["final_status"] == "SUCCEEDED", final["diagnostics"]
    out = namenode.local(OUTPUT)
    assert (out / "listing.txt").read_text().split() == ["a.txt", "b.txt", "sub"]
    assert (out / "all.txt").read_text() == "alpha\nbeta\nargs: -gpu all\n"
    assert sorted(os.listdir(out.parent)) == [out.name, "caffe_test"]  # no temporary left
