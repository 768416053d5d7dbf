"""The URL policy, profile choice, and refusals at submit (``check_urls``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlapp.config import ServerSettings
from dlapp.data import locations, staging
from dlapp.data.locations import DataConfig, Profile, pick_profile
from dlapp.errors import DataError
from dlapp.spec import AppSpec
from spec_builders import make_spec


def spec_with(inputs: list[dict[str, str]] = (), outputs: list[dict[str, str]] = ()) -> AppSpec:  # type: ignore[assignment]
    spec = make_spec("t")
    for b in inputs:
        spec = spec.input(**b)
    for b in outputs:
        spec = spec.output(**b)
    return spec.build()


@pytest.mark.parametrize(
    "url",
    [
        "sftp://169.254.169.254/x",
        "webhdfs://[fd00:ec2::254]:9870/x",
        "hdfs://metadata.google.internal/x",
        "s3://169.254.169.254/key",
        "sftp://[fe80::1]/x",
    ],
)
def test_link_local_and_metadata_hosts_are_refused(url: str) -> None:
    assert "link-local or metadata" in (locations.problem(url, DataConfig()) or "")


def test_a_password_in_the_url_is_refused() -> None:
    why = locations.problem("sftp://bob:hunter2@10.0.0.5/data", DataConfig())
    assert why is not None and "storage profiles" in why


def test_unknown_scheme_names_the_supported_ones() -> None:
    assert "supported: file, gcs, gs, hdfs" in (locations.problem("ftp://h/x", DataConfig()) or "")


def test_file_urls_only_under_the_allowed_roots(tmp_path: Path) -> None:
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "escape").symlink_to("/etc")
    config = DataConfig(file_roots=(str(tmp_path / "ok"),))
    assert locations.problem(str(tmp_path / "ok" / "x"), config) is None
    assert "must be under" in (locations.problem("/etc/passwd", config) or "")
    assert "must be under" in (locations.problem(str(tmp_path / "ok/../other"), config) or "")
    assert "must be under" in (locations.problem(str(tmp_path / "ok/escape/passwd"), config) or "")
    assert "no file_roots" in (locations.problem("/x", DataConfig(file_roots=())) or "")


def test_default_roots_allow_all_only_on_a_loopback_embedded_cluster(tmp_path: Path) -> None:
    embedded = ServerSettings(home=tmp_path)
    assert locations.data_config(embedded).file_roots is None
    shared = ServerSettings(home=tmp_path, host="0.0.0.0")
    assert locations.data_config(shared).file_roots == ()
    external = ServerSettings(home=tmp_path, ray_address="10.0.0.1:6379")
    assert locations.data_config(external).file_roots == ()
    listed = ServerSettings(home=tmp_path, host="0.0.0.0", file_roots=(tmp_path,))
    assert locations.data_config(listed).file_roots == (str(tmp_path.resolve()),)


def test_profiles_are_picked_by_longest_prefix_then_protocol_default() -> None:
    default = Profile("s3-default", "s3")
    lab = Profile("lab", "s3", ("s3://lab-",))
    team = Profile("team", "s3", ("s3://lab-team/",))
    profiles = (default, lab, team)
    assert pick_profile("s3://lab-team/x", "s3", profiles) is team
    assert pick_profile("s3://lab-other/x", "s3", profiles) is lab
    assert pick_profile("s3://public/x", "s3", profiles) is default
    assert pick_profile("gs://public/x", "gs", profiles) is None


def test_profile_options_never_show_in_reprs(tmp_path: Path) -> None:
    settings = ServerSettings(
        home=tmp_path,
        storage_profiles={"lab": {"protocol": "s3", "options": {"secret": "s3cr3t"}}},  # type: ignore[dict-item]
    )
    config = locations.data_config(settings)
    assert "s3cr3t" not in repr(settings)
    assert "s3cr3t" not in repr(config)


def test_storage_settings_come_from_the_environment_too(tmp_path: Path) -> None:
    from dlapp.config import load_server_settings

    env = {
        "DLAPP_STORAGE_PROFILES": '{"lab": {"protocol": "sftp", "urls": ["sftp://h/"]}}',
        "DLAPP_FILE_ROOTS": f"{tmp_path}:/data",
    }
    s = load_server_settings(env=env, home=tmp_path)
    assert s.storage_profiles["lab"].urls == ("sftp://h/",)
    assert s.file_roots == (tmp_path, Path("/data"))


def test_a_store_whose_library_is_missing_is_refused_naming_the_package() -> None:
    spec = spec_with(inputs=[{"url": "gs://lab-bucket/x/*", "path": "d"}])
    with pytest.raises(DataError, match="needs the Python package 'gcsfs'"):
        staging.check_urls(spec)


def test_check_urls_lists_every_problem(tmp_path: Path) -> None:
    spec = spec_with(
        inputs=[{"url": str(tmp_path / "missing"), "path": "a"}],
        outputs=[{"url": "sftp://169.254.169.254/o", "path": "o"}],
    )
    with pytest.raises(DataError) as err:
        staging.check_urls(spec)
    assert "nothing exists there" in str(err.value)
    assert "link-local" in str(err.value)


def test_transient_errors_are_retried_a_bounded_number_of_times() -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "ok"

    assert locations.retrying(flaky, sleeps.append) == "ok"
    assert sleeps == [1.0, 2.0]

    def down() -> None:
        calls.append(1)
        raise TimeoutError

    calls.clear()
    with pytest.raises(TimeoutError):
        locations.retrying(down, sleeps.append)
    assert len(calls) == locations.RETRIES


def test_a_missing_file_is_not_retried() -> None:
    calls: list[int] = []

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        locations.retrying(missing, lambda s: None)
    assert calls == [1]
