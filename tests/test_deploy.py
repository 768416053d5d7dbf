"""The deployment files name commands and options that exist (each is run with --help)."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest

from dlapp.cli import main as cli

from conftest import ROOT

UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))


def _dlapp_lines(unit: Path) -> list[list[str]]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(unit)
    lines = []
    for key in ("ExecStartPre", "ExecStart"):
        value = parser.get("Service", key, fallback="")
        argv = shlex.split(value.replace("${DLAPP_HEAD}", "head:6379"))
        if argv and argv[0].endswith("/dlapp"):
            lines.append(argv[1:])
    return lines


def test_there_are_units_for_the_head_the_server_and_the_nodes() -> None:
    assert {u.name for u in UNITS} == {
        "dlapp-ray-head.service",
        "dlapp-server.service",
        "dlapp-node.service",
    }


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_commands_exist(unit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in _dlapp_lines(unit):
        assert cli.main([*argv, "--help"]) == 0, argv
        assert "Usage:" in capsys.readouterr().out


def test_the_server_image_migrates_then_serves() -> None:
    text = (ROOT / "deploy" / "Dockerfile.server").read_text()
    assert "dlapp server migrate && exec dlapp server" in text
    assert "USER dlapp" in text and "RAY_AUTH_MODE=token" in text
