"""Bad input is refused with the reason and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlapp.client import DlappClient
from dlapp.errors import DataError, OutputExistsError, WorkspaceError
from dlapp.spec import AppSpec

from conftest import AppFactory, evil_tarball, pack

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("kind", ["dotdot", "symlink"])
def test_malicious_tarball_is_refused(
    client: DlappClient, make_app: AppFactory, tmp_path: Path, server_home: Path, kind: str
) -> None:
    spec = AppSpec.from_file(make_app("true\n", name=f"evil-{kind}"))
    before = len(client.list_apps())
    kept = sorted((server_home / "artifacts" / "workspaces").glob("*"))
    with pytest.raises(WorkspaceError, match="refused"):
        client.submit(spec, evil_tarball(tmp_path / "evil.tar.gz", kind))
    assert len(client.list_apps()) == before
    assert sorted((server_home / "artifacts" / "workspaces").glob("*")) == kept
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_not_a_tarball_is_refused(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    spec = AppSpec.from_file(make_app("true\n", name="junk"))
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not gzip")
    with pytest.raises(WorkspaceError, match="not a gzip-compressed tar"):
        client.submit(spec, junk)


def test_overwrite_false_refuses_an_existing_output_at_submit(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    spec = AppSpec.from_file(
        make_app(
            "mkdir -p output; echo new > output/keep.txt\n",
            name="noover",
            outputs=[{"url": str(out), "path": "output", "overwrite": False}],
        )
    )
    with pytest.raises(OutputExistsError, match="already exists and overwrite is false"):
        client.submit(spec, pack(Path(spec.workspace.path), tmp_path))
    assert (out / "keep.txt").read_text() == "precious"


def test_overwrite_false_is_honoured_at_stage_out_and_logs_are_kept(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    out = tmp_path / "appears-later"
    spec = AppSpec.from_file(
        make_app(
            # someone else writes the target while the app runs
            f"mkdir -p {out} && echo theirs > {out}/f.txt\n"
            "mkdir -p output; echo mine > output/f.txt; echo finished-work\n",
            name="race",
            outputs=[{"url": str(out), "path": "output", "overwrite": False}],
        )
    )
    app = client.submit(spec, pack(Path(spec.workspace.path), tmp_path))
    done = client.wait(app["id"], timeout_s=60)
    assert done["final_status"] == "FAILED"
    assert "already exists" in done["diagnostics"]
    assert (out / "f.txt").read_text() == "theirs\n"
    assert "finished-work" in client.logs(app["id"])


def test_overwrite_true_replaces_the_output_whole(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    out = tmp_path / "replace"
    out.mkdir()
    (out / "old.txt").write_text("old")
    spec = AppSpec.from_file(
        make_app(
            "mkdir -p output; echo new > output/new.txt\n",
            name="over",
            outputs=[{"url": str(out), "path": "output", "overwrite": True}],
        )
    )
    app = client.submit(spec, pack(Path(spec.workspace.path), tmp_path))
    assert client.wait(app["id"], timeout_s=60)["final_status"] == "SUCCEEDED"
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert not [p for p in tmp_path.iterdir() if "dlapp-tmp" in p.name or "dlapp-old" in p.name]


def test_unsupported_storage_scheme_is_refused(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    spec = AppSpec.from_file(
        make_app("true\n", name="ftp", inputs=[{"url": "ftp://host/x", "path": "data"}])
    )
    with pytest.raises(DataError, match="scheme 'ftp' is not supported"):
        client.submit(spec, pack(Path(spec.workspace.path), tmp_path))


def test_hdfs_paths_on_a_server_that_serves_none_say_what_to_configure(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    spec = AppSpec.from_file(
        make_app("true\n", name="hdfs", inputs=[{"url": "hdfs:///user/x/*", "path": "data"}])
    )
    with pytest.raises(DataError, match=r"does not serve hdfs:/// paths.*hdfs_endpoint"):
        client.submit(spec, pack(Path(spec.workspace.path), tmp_path))


def test_missing_input_is_refused(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    spec = AppSpec.from_file(
        make_app("true\n", name="noinput", inputs=[{"url": str(tmp_path / "nope"), "path": "d"}])
    )
    with pytest.raises(DataError, match="nothing exists there"):
        client.submit(spec, pack(Path(spec.workspace.path), tmp_path))
