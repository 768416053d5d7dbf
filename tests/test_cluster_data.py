"""Data through the real server and Ray: the data settings reach the node's supervisor, a failed
app's output is kept beside its URL (and `dlapp status` says where), and the stage-in lines reach
the container's log."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlapp.cli import main as cli
from dlapp.client import DlappClient
from dlapp.spec import AppSpec

from conftest import AppFactory, pack

pytestmark = pytest.mark.cluster


def test_failed_app_output_is_kept_and_staging_is_logged(
    client: DlappClient,
    make_app: AppFactory,
    tmp_path: Path,
    use_server: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.txt").write_text("x")
    out = tmp_path / "out"
    spec = AppSpec.from_file(
        make_app(
            "mkdir -p output && cp data/x.txt output/partial.txt\nexit 4\n",
            name="fails",
            inputs=[{"url": str(tmp_path / "in"), "path": "data"}],
            outputs=[{"url": str(out), "path": "output"}],
        )
    )
    app = client.submit(spec, pack(Path(spec.workspace.path), tmp_path))
    done = client.wait(app["id"], timeout_s=60)
    assert done["final_status"] == "FAILED", done
    assert not out.exists()
    assert (tmp_path / f"out.failed-{app['id']}" / "partial.txt").read_text() == "x"
    log = client.logs(app["id"], stream="stderr")
    assert "[dlapp] staging in: file://" in log and "[dlapp] staging in done: 1 files" in log
    assert cli.main(["status", app["id"]]) == 0  # and status says where the output went
    shown = capsys.readouterr().out
    assert f"Output kept at : file://{tmp_path}/out.failed-{app['id']}\n" in shown, shown
