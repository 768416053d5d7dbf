"""The example app (examples/mnist/app-docker.yaml) runs to SUCCEEDED in dlapp/pytorch-cpu
under the docker runtime, as it does under the process runtime (test_example.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from dlapp.cli import images
from dlapp.cli import main as cli
from docker_support import containers, require_docker

from conftest import ROOT

pytestmark = pytest.mark.cluster


def test_mnist_example_trains_in_a_container(
    use_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_docker()
    images.build("pytorch-cpu")  # cached; else debootstrap + the host's wheels (minutes)
    example = tmp_path / "mnist"
    shutil.copytree(ROOT / "examples" / "mnist", example, ignore=shutil.ignore_patterns("out"))
    assert cli.main(["launch", str(example / "app-docker.yaml"), "--wait", "--follow"]) == 0
    out = capsys.readouterr().out
    assert "FINISHED SUCCEEDED" in out
    app_id = re.search(r"submitted: (application_\d+_\d+)", out)
    assert app_id and containers(f"dlapp.app={app_id.group(1)}") == []
    m = re.search(r"accuracy=(\d\.\d+)", out)
    assert m, out[-2000:]
    result = example / "out" / "mnist-lenet-docker"
    metrics = json.loads((result / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(float(m.group(1)), abs=1e-4)
    assert metrics["accuracy"] >= 0.9
    assert (result / "model.pt").stat().st_size > 1000
