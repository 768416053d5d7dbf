"""TLS on the API: a real uvicorn serving https on loopback with a certificate made here; the
client and the CLI trust its CA when told, and refuse it in one line when not; a token is not
sent in clear to another machine without a warning."""

from __future__ import annotations

import datetime
import json
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from dlapp import embedded, tls
from dlapp.cli import main as cli
from dlapp.cli.admin import in_clear
from dlapp.client import DlappClient
from dlapp.config import ServerSettings, load_server_settings
from dlapp.errors import DlappError, ServerUnavailable
from dlapp.server.run import uvicorn_options

from inprocess import admin_token
from secure_server import Live, certificates, live_server


@pytest.fixture
def ca(tmp_path: Path) -> tls.EmbeddedTls:
    return certificates(tmp_path / "pki")


@pytest.fixture
def https(tmp_path: Path, ca: tls.EmbeddedTls) -> Iterator[tuple[Live, Path]]:
    home = tmp_path / "home"
    settings = ServerSettings(home=home, schedule_interval_s=0.05, tls_cert=ca.cert, tls_key=ca.key)
    with live_server(settings) as live:
        yield live, home


@pytest.fixture
def no_client_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for var in ("DLAPP_SERVER", "DLAPP_TOKEN", "DLAPP_CA_FILE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "config" / "dlapp" / "client.yaml"


# -- certificates -----------------------------------------------------------------------------


def test_the_embedded_ca_keeps_its_keys_private_and_covers_loopback(tmp_path: Path) -> None:
    files = tls.ensure_embedded(tmp_path / "home")
    assert stat.S_IMODE(files.key.parent.stat().st_mode) == 0o700
    for key in (files.key, files.ca.with_name("ca.key")):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert {"127.0.0.1", "::1"} <= ips
    assert {"localhost", socket.gethostname()} <= set(sans.get_values_for_type(x509.DNSName))
    assert cert.issuer == x509.load_pem_x509_certificate(files.ca.read_bytes()).subject


def test_the_ca_is_kept_and_the_server_certificate_issued_anew(tmp_path: Path) -> None:
    first = tls.ensure_embedded(tmp_path)
    ca, leaf = first.ca.read_bytes(), first.cert.read_bytes()
    second = tls.ensure_embedded(tmp_path)
    assert second.ca.read_bytes() == ca and second.cert.read_bytes() != leaf
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=tls.CA_DAYS)
    assert tls.ensure_embedded(tmp_path, now=later).ca.read_bytes() != ca  # expiring: renewed


# -- settings and the server's uvicorn options ------------------------------------------------


def test_tls_settings_go_together_and_make_the_url_https(tmp_path: Path) -> None:
    with pytest.raises(DlappError, match="tls_cert and tls_key go together"):
        load_server_settings(home=tmp_path, tls_cert=tmp_path / "c.pem")
    s = ServerSettings(home=tmp_path, port=8642, tls_cert=tmp_path / "c", tls_key=tmp_path / "k")
    assert s.url == "https://127.0.0.1:8642"


def test_a_missing_certificate_stops_the_server_with_one_line(tmp_path: Path) -> None:
    s = ServerSettings(home=tmp_path, tls_cert=tmp_path / "none.pem", tls_key=tmp_path / "k")
    with pytest.raises(DlappError, match=r"tls_cert: .*none\.pem is not a readable file"):
        uvicorn_options(s)


def test_proxy_headers_are_believed_from_the_trusted_proxies_only(tmp_path: Path) -> None:
    assert uvicorn_options(ServerSettings(home=tmp_path))["proxy_headers"] is False
    s = load_server_settings(home=tmp_path, env={"DLAPP_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8"})
    assert uvicorn_options(s) == {
        "proxy_headers": True,
        "forwarded_allow_ips": ["127.0.0.1", "10.0.0.0/8"],
    }


# -- client and CLI against a real https server -------------------------------------------------


def test_the_client_verifies_the_server_with_the_given_ca(
    https: tuple[Live, Path], ca: tls.EmbeddedTls
) -> None:
    live, home = https
    assert live.url.startswith("https://127.0.0.1:")
    with DlappClient(live.url, admin_token(home), ca_file=ca.ca) as client:
        assert client.whoami()["is_admin"]


def test_a_client_without_the_ca_is_refused_before_sending_its_token(
    https: tuple[Live, Path],
) -> None:
    live, home = https
    client = DlappClient(live.url, admin_token(home))  # the system's CAs only
    with client, pytest.raises(ServerUnavailable) as caught:
        client.whoami()
    message = caught.value.message
    assert message.startswith(f"cannot verify the TLS certificate of {live.url}")
    assert "--ca-file" in message and "\n" not in message


def test_a_ca_file_that_does_not_exist_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DlappError, match=r"cannot read the CA file .*nope\.pem"):
        DlappClient("https://127.0.0.1:1", ca_file=tmp_path / "nope.pem")


def test_login_with_the_ca_saves_it_and_the_cli_trusts_it(
    https: tuple[Live, Path],
    ca: tls.EmbeddedTls,
    no_client_config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    live, home = https
    monkeypatch.setattr("sys.stdin", _stdin(admin_token(home)))
    assert cli.main(["login", live.url, "--ca-file", str(ca.ca), "--token-stdin"]) == 0
    captured = capsys.readouterr()
    assert "logged in to" in captured.out and "warning" not in captured.err
    saved = yaml.safe_load(no_client_config.read_text())
    assert saved["server"] == live.url and saved["ca_file"] == str(ca.ca.resolve())
    assert cli.main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    # logging in again to the same server keeps its CA
    monkeypatch.setattr("sys.stdin", _stdin(admin_token(home)))
    assert cli.main(["login", live.url, "--token-stdin"]) == 0
    assert yaml.safe_load(no_client_config.read_text())["ca_file"] == str(ca.ca.resolve())


def test_the_cli_without_the_ca_prints_one_line_not_a_traceback(
    https: tuple[Live, Path],
    no_client_config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    live, home = https
    monkeypatch.setenv("DLAPP_SERVER", live.url)
    monkeypatch.setenv("DLAPP_TOKEN", admin_token(home))
    assert cli.main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dlapp: error: cannot verify the TLS certificate")
    assert "Traceback" not in err and err.count("\n") == 1
    monkeypatch.setattr("sys.stdin", _stdin(admin_token(home)))
    assert cli.main(["login", live.url, "--token-stdin"]) == 1
    assert "cannot verify the TLS certificate" in capsys.readouterr().err
    assert not no_client_config.exists()  # nothing saved


def test_the_ca_file_comes_from_the_environment_too(
    https: tuple[Live, Path],
    ca: tls.EmbeddedTls,
    no_client_config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    live, home = https
    monkeypatch.setenv("DLAPP_SERVER", live.url)
    monkeypatch.setenv("DLAPP_TOKEN", admin_token(home))
    monkeypatch.setenv("DLAPP_CA_FILE", str(ca.ca))
    assert cli.main(["list", "--json"]) == 0
    capsys.readouterr()


# -- tokens in clear ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "clear"),
    [
        ("http://gpu-head.example.org:8642", True),
        ("http://10.0.0.7:8642", True),
        ("http://[2001:db8::1]:8642", True),
        ("http://127.0.0.1:8642", False),
        ("http://127.3.2.1:8642", False),
        ("http://[::1]:8642", False),
        ("http://localhost:8642", False),
        ("https://gpu-head.example.org:8642", False),
    ],
)
def test_a_token_in_clear_is_plain_http_to_another_machine(url: str, clear: bool) -> None:
    assert in_clear(url) is clear


def test_login_over_plain_http_to_another_host_warns(
    no_client_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", _stdin("dlapp_" + "x" * 43))
    assert cli.main(["login", "http://dlapp-test.invalid:8642", "--token-stdin"]) == 1
    err = capsys.readouterr().err
    assert "warning: http://dlapp-test.invalid:8642 is plain http to another machine" in err
    assert "in clear" in err


# -- the embedded cluster's state ----------------------------------------------------------------


def test_the_state_file_tells_the_client_where_the_ca_is(tmp_path: Path) -> None:
    files = tls.ensure_embedded(tmp_path)
    assert embedded.issuing_ca(tmp_path, files.cert) == files.ca
    assert embedded.issuing_ca(tmp_path, tmp_path / "other.pem") is None
    assert embedded.issuing_ca(tmp_path, None) is None
    embedded.write_state(tmp_path, "https://127.0.0.1:1", 1, files.ca)
    state = json.loads(embedded.state_path(tmp_path).read_text())
    assert state == {"url": "https://127.0.0.1:1", "pid": 1, "ca_file": str(files.ca)}


def _stdin(text: str) -> object:
    import io

    return io.StringIO(text + "\n")
