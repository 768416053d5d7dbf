"""`dlapp up --tls`: the embedded cluster serves https with a certificate of its own CA, and the
CLI trusts that CA by itself (through server.json); a client that was not given it is refused."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx
import pytest

from dlapp import embedded, tls
from dlapp.cli import main as cli
from dlapp.client import DlappClient
from dlapp.credentials import ADMIN_TOKEN_FILE
from dlapp.errors import ServerUnavailable

pytestmark = pytest.mark.cluster


def test_up_tls_serves_https_that_the_cli_trusts_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("DLAPP_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no client config file
    for var in ("DLAPP_SERVER", "DLAPP_TOKEN", "DLAPP_CA_FILE"):
        monkeypatch.delenv(var, raising=False)
    try:
        assert cli.main(["up", "--tls", "--gpus", "0", "--cpus", "1"]) == 0
        out = capsys.readouterr().out
        files = tls.paths(home)
        assert "started: https://127.0.0.1:" in out and str(files.ca) in out
        state = json.loads(embedded.state_path(home).read_text())
        assert state["url"].startswith("https://") and state["ca_file"] == str(files.ca)
        assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
        assert cli.main(["list", "--json"]) == 0  # the CLI found and trusted the CA
        assert json.loads(capsys.readouterr().out) == []
        assert cli.main(["up", "--tls"]) == 0
        assert "already running: https://" in capsys.readouterr().out
        token = (home / ADMIN_TOKEN_FILE).read_text().strip()
        with DlappClient(state["url"], token) as stranger, pytest.raises(ServerUnavailable):
            stranger.whoami()  # the system's CAs do not know this one
        with pytest.raises(httpx.HTTPError):  # and plain http is not served
            httpx.get(state["url"].replace("https:", "http:") + "/healthz", timeout=5)
    finally:
        assert cli.main(["down"]) == 0
