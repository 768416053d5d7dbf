"""Hostile storage URLs: hosts that reach the cloud metadata service or the server itself.

Each URL is one an app's spec could name as an input or output; staging would open it from the
server (at submit) and from the node. The host is read as the address it really names (IPv4
inside IPv6, the old numeric IPv4 forms) before the policy looks at it.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from dlapp.data import locations, staging
from dlapp.data.locations import DataConfig, Profile
from dlapp.errors import DataError
from spec_builders import make_spec

NONE = DataConfig()


@pytest.mark.parametrize(
    "url",
    [
        "webhdfs://[::ffff:169.254.169.254]/x",  # IPv4-mapped
        "webhdfs://[::ffff:a9fe:a9fe]/x",
        "webhdfs://[::ffff:0:a9fe:a9fe]/x",  # IPv4-translated (SIIT)
        "webhdfs://[::169.254.169.254]/x",  # IPv4-compatible
        "webhdfs://[64:ff9b::a9fe:a9fe]/x",  # NAT64, well-known prefix
        "webhdfs://[64:ff9b::169.254.169.254]/x",
        "webhdfs://[64:ff9b:1::a9fe:a9fe]/x",  # NAT64, local-use prefix (/96)
        "webhdfs://[64:ff9b:1:a9fe:a9:fe00::]/x",  # the same, /48 format
        "sftp://[2002:a9fe:a9fe::]/x",  # 6to4
        "sftp://[2001:0:4136:e378:8000:63bf:5601:5601]/x",  # Teredo, client 169.254.169.254
        "webhdfs://2852039166/x",  # one decimal number
        "webhdfs://0xa9fea9fe/x",  # one hexadecimal number
        "webhdfs://0251.0376.0251.0376/x",  # octal parts
        "webhdfs://0xa9.0xfe.0xa9.0xfe/x",  # hexadecimal parts
        "webhdfs://169.254.43518/x",  # a.b.c form
        "webhdfs://169.16689662/x",  # a.b form
        "sftp://169.254.169.254./x",  # trailing dot
    ],
)
def test_the_metadata_address_in_disguise_is_refused(url: str) -> None:
    assert "link-local or metadata" in (locations.problem(url, NONE) or "")


@pytest.mark.parametrize(
    "url",
    [
        "webhdfs://0xa9fe.0xa9fe/x",  # numeric, but no address: never sent to a resolver
        "webhdfs://1.2.3.4.5/x",
        "webhdfs://4294967296/x",
        "http://2852039166/",
    ],
)
def test_a_numeric_host_that_is_no_address_is_refused(url: str) -> None:
    why = locations.problem(url, NONE)
    assert why is not None
    assert "not a valid IP address" in why or "not supported" in why


@pytest.mark.parametrize(
    "url",
    [
        "webhdfs://127.0.0.1:8080/api/v1/apps",
        "webhdfs://127.9.9.9/x",
        "webhdfs://127.1/x",
        "webhdfs://2130706433/x",
        "webhdfs://0x7f000001/x",
        "webhdfs://localhost:8080/x",
        "webhdfs://LOCALHOST./x",
        "webhdfs://api.localhost/x",
        "sftp://[::1]/x",
        "sftp://[0:0:0:0:0:0:0:1]/x",
        "webhdfs://[::ffff:127.0.0.1]:8080/x",
        "webhdfs://[64:ff9b::7f00:1]/x",
        "webhdfs://0.0.0.0:8080/x",
        "webhdfs://0/x",
        "webhdfs://0x/x",
        "webhdfs://[::]/x",
        "hdfs://127.0.0.1:8020/x",
        "s3://localhost/key",
    ],
)
def test_a_loopback_host_that_would_call_the_server_itself_is_refused(url: str) -> None:
    why = locations.problem(url, NONE) or ""
    assert "loopback or unspecified" in why and "storage profile" in why


def test_a_name_that_resolves_to_loopback_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def resolve(host: str, *args: Any) -> list[Any]:
        assert host == "sneaky.example"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]

    monkeypatch.setattr(locations.socket, "getaddrinfo", resolve)
    assert "loopback" in (locations.problem("webhdfs://sneaky.example:9870/x", NONE) or "")


SFTP_LAB = Profile("lab-sftp", "sftp", ("sftp://127.0.0.1",), {"port": 2222})


def test_a_loopback_store_an_admin_profile_serves_is_allowed() -> None:
    config = DataConfig(profiles=(SFTP_LAB,))
    assert locations.problem("sftp://127.0.0.1/data/x", config) is None
    assert locations.problem("sftp://127.0.0.1", config) is None


@pytest.mark.parametrize(
    "url",
    [
        "sftp://127.0.0.1:8080/x",  # another port than the profile's URL names
        "sftp://127.0.0.10/x",  # the prefix as a string, not as a host
        "webhdfs://127.0.0.1/x",  # another protocol
        "sftp://localhost/x",  # the same machine, but not the URL the admin wrote
    ],
)
def test_a_profile_serves_only_the_loopback_host_and_port_it_names(url: str) -> None:
    config = DataConfig(profiles=(SFTP_LAB,))
    assert "loopback" in (locations.problem(url, config) or "")


def test_a_protocol_default_profile_does_not_open_loopback() -> None:
    config = DataConfig(profiles=(Profile("any-sftp", "sftp", (), {}),))
    assert "loopback" in (locations.problem("sftp://127.0.0.1/x", config) or "")


def test_no_profile_opens_the_metadata_address() -> None:
    config = DataConfig(profiles=(Profile("bad", "webhdfs", ("webhdfs://169.254.169.254",)),))
    assert "metadata" in (locations.problem("webhdfs://169.254.169.254/x", config) or "")


@pytest.mark.parametrize(
    "url",
    [
        "sftp://10.0.0.5/x",
        "webhdfs://[2001:db8::1]:9870/x",
        "s3://bucket/key",
        "gs://bucket/key",
        "webhdfs://192.0.2.10/x",
    ],
)
def test_ordinary_hosts_pass(url: str) -> None:
    assert locations.problem(url, NONE) is None


def test_the_refusal_at_submit_names_the_url_and_why() -> None:
    spec = make_spec().input("webhdfs://[::ffff:169.254.169.254]/x").build()
    with pytest.raises(DataError, match=r"webhdfs://\[::ffff:169\.254\.169\.254\]/x: .*metadata"):
        staging.check_urls(spec, config=NONE)
    spec = make_spec().output("webhdfs://localhost:8080/api/v1/apps").build()
    with pytest.raises(DataError, match=r"output webhdfs://localhost:8080/api/v1/apps: .*loopback"):
        staging.check_urls(spec, config=NONE)
