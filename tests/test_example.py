"""The example app (examples/mnist) runs to SUCCEEDED on a real server and writes its output."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from dlapp.cli import main as cli

from conftest import ROOT

pytestmark = pytest.mark.cluster


def test_mnist_example_trains_and_writes_metrics(
    use_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = tmp_path / "mnist"
    shutil.copytree(ROOT / "examples" / "mnist", example, ignore=shutil.ignore_patterns("out"))
    assert cli.main(["launch", str(example / "app.yaml"), "--wait", "--follow"]) == 0
    out = capsys.readouterr().out
    assert "FINISHED SUCCEEDED" in out
    m = re.search(r"accuracy=(\d\.\d+)", out)
    assert m, out[-2000:]
    metrics = json.loads((example / "out" / "mnist-lenet" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(float(m.group(1)), abs=1e-4)
    assert metrics["accuracy"] >= 0.9
    assert (example / "out" / "mnist-lenet" / "model.pt").stat().st_size > 1000
    assert metrics["container_index"] == 0
