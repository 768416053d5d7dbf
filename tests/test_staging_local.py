"""Staging with local paths and file:// URLs: inputs, atomic outputs, links, failed apps."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from dlapp.data import commit, staging
from dlapp.data.locations import DataConfig
from dlapp.errors import DataError, OutputExistsError
from dlapp.spec import DataBinding


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    w = tmp_path / "ws"
    w.mkdir()
    return w


def test_file_url_directory_input_is_copied_with_progress(tmp_path: Path, ws: Path) -> None:
    src = tmp_path / "data"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.bin").write_bytes(b"b" * 1000)
    lines: list[str] = []
    n = staging.stage_in([DataBinding(url=f"file://{src}", path="data")], ws, lines.append)
    assert n == 1001
    assert tree(ws / "data") == {"a.txt": b"a", "sub/b.bin": b"b" * 1000}
    assert lines[0] == "staging in: 2 files, 1001 B"
    assert lines[1] == f"staging in: file://{src} -> data: 2 files, 1001 B"
    assert lines[-1].startswith("staging in done: 2 files, 1001 B in ")
    assert lines[-1].endswith("/s")


def test_glob_input_copies_matches_by_name(tmp_path: Path, ws: Path) -> None:
    for name in ("x1.csv", "x2.csv", "y.txt"):
        (tmp_path / name).write_text(name)
    (tmp_path / "xdir.csv").mkdir()
    (tmp_path / "xdir.csv" / "inner").write_text("i")
    staging.stage_in([DataBinding(url=str(tmp_path / "x*.csv"), path="in")], ws)
    assert tree(ws / "in") == {
        "x1.csv": b"x1.csv",
        "x2.csv": b"x2.csv",
        "xdir.csv/inner": b"i",
    }


def test_single_file_input_lands_under_its_name(tmp_path: Path, ws: Path) -> None:
    (tmp_path / "w.pt").write_bytes(b"weights")
    staging.stage_in([DataBinding(url=str(tmp_path / "w.pt"), path="m")], ws)
    assert (ws / "m" / "w.pt").read_bytes() == b"weights"


def test_input_link_outside_the_file_roots_is_skipped(tmp_path: Path, ws: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "ok.txt").write_text("ok")
    (allowed / "passwd").symlink_to("/etc/passwd")
    config = DataConfig(file_roots=(str(allowed),))
    staging.stage_in([DataBinding(url=str(allowed), path="d")], ws, config=config)
    assert tree(ws / "d") == {"ok.txt": b"ok"}


def out_binding(url: Path, **kw: object) -> DataBinding:
    return DataBinding(url=str(url), path="output", **kw)  # type: ignore[arg-type]


def test_output_is_committed_and_no_temporary_is_left(tmp_path: Path, ws: Path) -> None:
    (ws / "output" / "d").mkdir(parents=True)
    (ws / "output" / "d" / "m.json").write_text("{}")
    target = tmp_path / "results" / "run1"
    staging.stage_out([out_binding(target)], ws)
    assert tree(target) == {"d/m.json": b"{}"}
    assert os.listdir(target.parent) == ["run1"]


def test_overwrite_false_refuses_and_true_replaces(tmp_path: Path, ws: Path) -> None:
    (ws / "output").mkdir()
    (ws / "output" / "new.txt").write_text("new")
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(OutputExistsError):
        staging.stage_out([out_binding(target)], ws)
    staging.stage_out([out_binding(target, overwrite=True)], ws)
    assert tree(target) == {"new.txt": b"new"}
    assert sorted(os.listdir(tmp_path)) == ["out", "ws"]


def test_output_interrupted_mid_copy_leaves_nothing_visible(
    tmp_path: Path, ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ws / "output").mkdir()
    for i in range(5):
        (ws / "output" / f"part-{i}").write_bytes(b"x" * 100)
    real_put = commit.put_file
    calls: list[str] = []

    def put_then_die(fs: object, path: Path, remote: str) -> None:
        calls.append(remote)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the node going away, mid-copy
        real_put(fs, path, remote)

    monkeypatch.setattr(commit, "put_file", put_then_die)
    with pytest.raises(KeyboardInterrupt):
        staging.stage_out([out_binding(tmp_path / "out")], ws)
    assert sorted(os.listdir(tmp_path)) == ["ws"]  # no target, no temporary


def test_output_link_to_etc_passwd_does_not_leak(tmp_path: Path, ws: Path) -> None:
    (ws / "output").mkdir()
    (ws / "output" / "real.txt").write_text("mine")
    (ws / "output" / "passwd").symlink_to("/etc/passwd")
    (ws / "output" / "etc").symlink_to("/etc")
    (ws / "inner.txt").write_text("inside")
    (ws / "output" / "inside").symlink_to(ws / "inner.txt")
    lines: list[str] = []
    staging.stage_out([out_binding(tmp_path / "out")], ws, lines.append)
    assert tree(tmp_path / "out") == {"real.txt": b"mine", "inside": b"inside"}
    assert any("passwd: a link that leaves the workspace" in line for line in lines)


def test_output_that_is_itself_a_link_out_is_refused(tmp_path: Path, ws: Path) -> None:
    (ws / "output").symlink_to("/etc/passwd")
    with pytest.raises(DataError, match="leaves the workspace"):
        staging.stage_out([out_binding(tmp_path / "out")], ws)
    assert not (tmp_path / "out").exists()


def test_hard_link_to_a_file_outside_the_output_is_skipped(tmp_path: Path, ws: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not yours")
    (ws / "output").mkdir()
    os.link(secret, ws / "output" / "copy")
    (ws / "output" / "a").write_text("a")
    os.link(ws / "output" / "a", ws / "output" / "b")  # both inside: kept
    staging.stage_out([out_binding(tmp_path / "out")], ws)
    assert tree(tmp_path / "out") == {"a": b"a", "b": b"a"}


def test_failed_app_output_is_saved_under_a_marked_path(tmp_path: Path, ws: Path) -> None:
    (ws / "output").mkdir()
    (ws / "output" / "partial.txt").write_text("half")
    target = tmp_path / "out"
    staging.stage_out(
        [out_binding(target), DataBinding(url=str(tmp_path / "o2"), path="missing")],
        ws,
        failed_app_id="application_1_0001",
    )
    assert not target.exists()
    assert tree(tmp_path / "out.failed-application_1_0001") == {"partial.txt": b"half"}


def test_save_on_failure_false_saves_nothing(tmp_path: Path, ws: Path) -> None:
    (ws / "output").mkdir()
    (ws / "output" / "p").write_text("p")
    staging.stage_out(
        [out_binding(tmp_path / "out", save_on_failure=False)], ws, failed_app_id="app_x"
    )
    assert sorted(os.listdir(tmp_path)) == ["ws"]


class Copies:
    """Staging's copy of one local file, slowed down, counting copies at once."""

    def __init__(self, fail: str | None = None) -> None:
        self.lock = threading.Lock()
        self.active = self.most = self.started = 0
        self.fail = fail
        self.real = staging._copy_local

    def __call__(self, src: str, dest: Path) -> int:
        with self.lock:
            self.started += 1
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            time.sleep(0.02)
            if self.fail and src.endswith(self.fail):
                raise PermissionError(f"refused: {src}")
            return self.real(src, dest)
        finally:
            with self.lock:
                self.active -= 1


def many(root: Path, n: int) -> dict[str, bytes]:
    root.mkdir()
    for i in range(n):
        (root / f"f{i:03d}.bin").write_bytes(bytes([i % 256]) * (i + 1))
    return tree(root)


@pytest.mark.parametrize("transfers", [1, 4])
def test_files_of_an_input_are_copied_several_at_once(
    tmp_path: Path, ws: Path, monkeypatch: pytest.MonkeyPatch, transfers: int
) -> None:
    expected = many(tmp_path / "src", 40)
    copies = Copies()
    monkeypatch.setattr(staging, "_copy_local", copies)
    lines: list[str] = []
    config = DataConfig(transfers=transfers)
    n = staging.stage_in(
        [DataBinding(url=f"file://{tmp_path / 'src'}", path="d")], ws, lines.append, config=config
    )
    assert tree(ws / "d") == expected and n == sum(len(v) for v in expected.values())
    assert copies.most == transfers  # never more than asked, and as many when asked
    assert lines[-1].startswith("staging in done: 40 files, ")


def test_the_first_failure_stops_the_copies_not_yet_begun(
    tmp_path: Path, ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    many(tmp_path / "src", 200)
    copies = Copies(fail="f003.bin")
    monkeypatch.setattr(staging, "_copy_local", copies)
    with pytest.raises(PermissionError, match=r"f003\.bin"):
        staging.stage_in(
            [DataBinding(url=f"file://{tmp_path / 'src'}", path="d")],
            ws,
            config=DataConfig(transfers=4),
        )
    assert copies.started < 200  # the rest were cancelled, not copied after the failure
