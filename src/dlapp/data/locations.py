"""Where data lives: storage URLs, the server's named profiles, and the URL policy.

A data URL names its store by scheme (``file`` for plain paths). The server's
``storage_profiles`` give each store its endpoint and credentials: the profile whose ``urls``
prefix matches the URL longest wins, else the profile of that protocol with no ``urls`` (its
default). Credentials come only from profiles, never from the spec; a URL holding a password is
refused, and profiles' options are never logged or answered.

The policy, checked at submit and again on the node: ``file`` URLs only under ``file_roots``;
no URL whose host is a link-local or cloud-metadata address; and no URL whose host is loopback
or unspecified (``127.0.0.0/8``, ``::1``, ``0.0.0.0``, ``localhost``: the server itself, whose
own API staging would call) unless a profile's ``urls`` prefix names that very host and port.
A host is first read as the address it really names: IPv4 inside IPv6 (mapped, translated,
compatible, NAT64, 6to4, Teredo) and the old numeric IPv4 forms (``2852039166``,
``0xa9.0xfe.0xa9.0xfe``, ``0251.0376.0251.0376``, ``169.254.43518``), which resolvers still
accept; a host made of numbers that names no address is refused.

``hdfs:///path`` (no namenode: the reference format's ``hdfs=/user/tony/x``) names a path in
the cluster's HDFS namespace, which the server's ``hdfs_endpoint`` and ``hdfs_map`` serve: the
longest matching path prefix gives the URL that stands for it (``webhdfs://namenode:9870/...``,
``s3://bucket/...``), and that URL is checked and opened in its place.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import os
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

import fsspec

from dlapp.errors import ChecksumMismatch, DataError
from dlapp.spec import url_scheme

if TYPE_CHECKING:
    from dlapp.config import ServerSettings

T = TypeVar("T")
# scheme -> the Python package its fsspec filesystem needs
PACKAGES = {
    "file": "fsspec",
    "sftp": "paramiko",
    "ssh": "paramiko",
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "hdfs": "hdfs-native",  # or pyarrow (with a Hadoop client and a JVM)
    "webhdfs": "requests",
}
# the package behind a protocol's fsspec class, where fsspec's own module needs another one
_BACKENDS = {"fsspec.implementations.arrow": "pyarrow"}
HDFS_NAMESPACE = "hdfs:///"  # an HDFS path with no namenode: the server's hdfs_endpoint serves it
HDFS_NOT_SERVED = (
    "this server does not serve hdfs:/// paths (no namenode in the URL): an admin sets "
    "hdfs_endpoint (such as webhdfs://namenode:9870) or hdfs_map in the server settings "
    "(docs/data.md#hdfs), or write the store's own URL (webhdfs://namenode:9870/user/...)"
)
# stores where a rename is atomic: outputs are renamed into place; the others get a marker
RENAME_STORES = frozenset({"file", "sftp", "ssh", "hdfs", "webhdfs"})
# stores whose URL host is a network host (for s3 and gs it is a bucket name)
_NETWORK_HOSTS = frozenset({"sftp", "ssh", "hdfs", "webhdfs"})
_BLOCKED_NAMES = frozenset({"metadata.google.internal", "metadata", "instance-data"})
_BLOCKED_NETS = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
)
# the server itself: loopback, and the unspecified addresses (connecting to them reaches it too)
_SELF_NETS = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("0.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("::/128"),
)
# IPv6 prefixes whose last 32 bits are an IPv4 address (RFC 4291, 6052, 6145, 8215)
_V4_IN_LAST_32 = (
    ipaddress.ip_network("::/96"),
    ipaddress.ip_network("::ffff:0:0/96"),
    ipaddress.ip_network("::ffff:0:0:0/96"),
    ipaddress.ip_network("64:ff9b::/96"),
    ipaddress.ip_network("64:ff9b:1::/48"),
)
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Profile:
    name: str
    protocol: str
    urls: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class DataConfig:
    """What staging needs from the server settings; travels to the node in the plan."""

    profiles: tuple[Profile, ...] = ()
    file_roots: tuple[str, ...] | None = None  # None: any local path
    cache_dir: str | None = None
    cache_max_bytes: int = 0
    verify_checksums: bool = True
    transfers: int = 8  # files of one input fetched at once
    # hdfs:/// path prefixes and the URL prefixes serving them (hdfs_endpoint is "/")
    hdfs_map: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "profiles": [
                {"name": p.name, "protocol": p.protocol, "urls": list(p.urls), "options": p.options}
                for p in self.profiles
            ],
            "hdfs_map": [list(pair) for pair in self.hdfs_map],
            "file_roots": None if self.file_roots is None else list(self.file_roots),
            "cache_dir": self.cache_dir,
            "cache_max_bytes": self.cache_max_bytes,
            "verify_checksums": self.verify_checksums,
            "transfers": self.transfers,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataConfig:
        roots = data.get("file_roots")
        return cls(
            profiles=tuple(
                Profile(p["name"], p["protocol"], tuple(p["urls"]), dict(p["options"]))
                for p in data.get("profiles", ())
            ),
            file_roots=None if roots is None else tuple(roots),
            cache_dir=data.get("cache_dir"),
            cache_max_bytes=int(data.get("cache_max_bytes", 0)),
            verify_checksums=bool(data.get("verify_checksums", True)),
            transfers=max(1, int(data.get("transfers", 8))),
            hdfs_map=tuple((str(a), str(b)) for a, b in data.get("hdfs_map", ())),
        )


def data_config(settings: ServerSettings) -> DataConfig:
    """The server's data settings. Unset ``file_roots`` allows every local path only on an
    embedded cluster that listens on loopback alone; any other server allows none."""
    if settings.file_roots is not None:
        roots: tuple[str, ...] | None = tuple(
            os.path.realpath(os.path.expanduser(r)) for r in settings.file_roots
        )
    elif settings.ray_address is None and _is_loopback(settings.host):
        roots = None
    else:
        roots = ()
    return DataConfig(
        profiles=tuple(
            Profile(name, p.protocol, p.urls, dict(p.options))
            for name, p in sorted(settings.storage_profiles.items())
        ),
        file_roots=roots,
        cache_dir=str(settings.cache),
        cache_max_bytes=settings.cache_max_mb * 1024 * 1024,
        verify_checksums=settings.verify_checksums,
        transfers=settings.staging_transfers,
        hdfs_map=hdfs_routes(settings.hdfs_endpoint, settings.hdfs_map),
    )


def hdfs_routes(endpoint: str | None, mapping: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``hdfs_endpoint`` and ``hdfs_map`` as (path prefix, URL prefix) pairs, both ending in
    ``/``, the longest path prefix first; the endpoint serves ``/``."""
    pairs = {_slash(k): _slash(v) for k, v in mapping.items()}
    if endpoint:
        pairs.setdefault("/", _slash(endpoint))
    return tuple(sorted(pairs.items(), key=lambda kv: (-len(kv[0]), kv[0])))


def _slash(text: str) -> str:
    return text if text.endswith("/") else text + "/"


def in_hdfs_namespace(url: str) -> bool:
    """``hdfs:///path``: an HDFS path that names no namenode."""
    return url[: len(HDFS_NAMESPACE)].lower() == HDFS_NAMESPACE


def hdfs_target(url: str, config: DataConfig) -> str | None:
    """The URL serving the ``hdfs:///`` URL ``url`` (its longest ``hdfs_map`` prefix), or None
    when the server serves no such path."""
    path = url[len(HDFS_NAMESPACE) - 1 :]  # "/user/tony/x"
    for prefix, target in config.hdfs_map:
        if path.startswith(prefix):
            return target + path[len(prefix) :]
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- policy -----------------------------------------------------------------------------------


def problem(url: str, config: DataConfig) -> str | None:
    """Why ``url`` may not be used here, or None."""
    if in_hdfs_namespace(url):
        if ".." in PurePosixPath(urlparse(url).path).parts:
            return "an hdfs path may not contain '..'"
        target = hdfs_target(url, config)
        if target is None:
            return HDFS_NOT_SERVED
        return _problem(target, config, served=True)
    return _problem(url, config)


def _problem(url: str, config: DataConfig, served: bool = False) -> str | None:
    """``served``: an admin wrote this URL's host (the hdfs_endpoint or an hdfs_map target)."""
    scheme = url_scheme(url)
    if scheme not in PACKAGES:
        return f"scheme {scheme!r} is not supported (supported: {', '.join(sorted(PACKAGES))})"
    parsed = urlparse(url)
    if parsed.password:
        return "credentials do not belong in a URL: the server's storage profiles hold them"
    if scheme == "file":
        return _file_problem(local_path(url), config.file_roots)
    host = parsed.hostname
    if not host:
        return None
    resolved: list[str] = []
    if scheme in _NETWORK_HOSTS:
        # unresolvable here: the node checks again before it connects
        with contextlib.suppress(OSError, UnicodeError):
            resolved = [str(info[4][0]) for info in socket.getaddrinfo(host, None)]
    return host_problem(host, resolved, served=served or profile_serves(url, config.profiles))


def local_path(url: str) -> str:
    return urlparse(url).path if url.startswith("file:") else url


def _file_problem(path: str, roots: Sequence[str] | None) -> str | None:
    if roots is None:
        return None
    real = os.path.realpath(path)
    if any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots):
        return None
    if not roots:
        return "local paths are not allowed on this server (no file_roots configured)"
    return f"local paths must be under {', '.join(roots)}"


def inside_roots(path: str, roots: Sequence[str] | None) -> bool:
    return _file_problem(path, roots) is None


def host_problem(host: str, resolved: Sequence[str] = (), served: bool = False) -> str | None:
    """Why a URL may not name ``host`` (which ``resolved`` are the addresses of), or None.
    Pure. ``served``: an admin's profile names this very host and port, so that it may be the
    server's own machine (a store on loopback); never the metadata address."""
    name = host.lower().rstrip(".")
    if name in _BLOCKED_NAMES:
        return f"host {host!r} is a link-local or metadata address"
    own = name == "localhost" or name.endswith(".localhost")
    addresses: list[IPAddress] = []
    for text in (name, *resolved):
        found = host_addresses(text)
        if found is None:
            return f"host {host!r} is made of numbers but is not a valid IP address"
        addresses += found
    if any(ip in net for ip in addresses for net in _BLOCKED_NETS if ip.version == net.version):
        return f"host {host!r} is a link-local or metadata address"
    own = own or any(
        ip in net for ip in addresses for net in _SELF_NETS if ip.version == net.version
    )
    if own and not served:
        return (
            f"host {host!r} is a loopback or unspecified address: the server itself; only a "
            "storage profile whose urls name this host and port may use it"
        )
    return None


def host_addresses(host: str) -> list[IPAddress] | None:
    """The addresses ``host`` names, IPv4 inside IPv6 included ([] for a name); None for a
    host made of numbers that is no address (``1.2.3.4.5``, ``0xa9fe.0xa9fe``)."""
    text = host.split("%")[0].lower().rstrip(".")
    try:
        ip: IPAddress = ipaddress.ip_address(text)
    except ValueError:
        labels = text.split(".")
        if not all(_NUMERIC_LABEL.match(label) for label in labels):
            return []  # a name
        v4 = _legacy_ipv4(labels)
        return None if v4 is None else [v4]
    if isinstance(ip, ipaddress.IPv4Address):
        return [ip]
    return [ip, *_embedded_ipv4(ip)]


def _legacy_ipv4(labels: Sequence[str]) -> ipaddress.IPv4Address | None:
    """``inet_aton``'s reading of 1 to 4 decimal, octal (``0``...) or hex (``0x``...) parts:
    the last one fills the remaining bytes."""
    if not 1 <= len(labels) <= 4 or any(len(label) > 34 for label in labels):
        return None
    values = []
    for label in labels:
        if label.startswith("0x"):
            values.append(int(label[2:] or "0", 16))
        elif len(label) > 1 and label.startswith("0"):
            if any(c in "89" for c in label):
                return None
            values.append(int(label, 8))
        else:
            values.append(int(label))
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for i, v in enumerate(head):
        number += v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address that ``ip`` may carry to an IPv4 host through a translator."""
    found: list[ipaddress.IPv4Address] = []
    value = int(ip)
    if any(ip in net for net in _V4_IN_LAST_32):
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    if ip in _NAT64_LOCAL:  # RFC 6052 formats /48, /56, /64 (bits 64-71 are skipped)
        b = ip.packed
        found += [
            ipaddress.IPv4Address(b[6:8] + b[9:11]),
            ipaddress.IPv4Address(b[7:8] + b[9:12]),
            ipaddress.IPv4Address(b[9:13]),
        ]
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found += list(ip.teredo)
    return found


def profile_serves(url: str, profiles: Sequence[Profile]) -> bool:
    """Whether a profile's ``urls`` prefix matches ``url`` and names the same scheme, host and
    port (``sftp://127.0.0.1`` serves ``sftp://127.0.0.1/x``, not ``sftp://127.0.0.1:80/x``)."""
    try:
        parsed = urlparse(url)
        target = (parsed.scheme.lower(), parsed.hostname, parsed.port)
        for p in profiles:
            for prefix in p.urls:
                named = urlparse(prefix)
                if url.startswith(prefix) and target == (
                    named.scheme.lower(),
                    named.hostname,
                    named.port,
                ):
                    return True
    except ValueError:  # a port that is no number
        return False
    return False


# -- opening a store --------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """One URL opened on its store: ``fs`` (an fsspec filesystem) and the path on it."""

    url: str
    protocol: str
    path: str
    fs: Any = field(repr=False)

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    @property
    def renames_atomically(self) -> bool:
        return self.protocol in RENAME_STORES

    def close(self) -> None:
        """Let go of the store's connection (sftp holds an SSH session per filesystem)."""
        client = getattr(self.fs, "client", None)
        if client is not None and hasattr(client, "close"):
            with contextlib.suppress(Exception):
                client.close()


def pick_profile(url: str, protocol: str, profiles: Sequence[Profile]) -> Profile | None:
    """The longest ``urls`` prefix matching ``url``, else the protocol's default profile."""
    best: tuple[int, Profile] | None = None
    for p in profiles:
        for prefix in p.urls:
            if url.startswith(prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), p)
    if best is not None:
        return best[1]
    defaults = [p for p in profiles if not p.urls and p.protocol == protocol]
    return defaults[0] if defaults else None


def check_installed(protocol: str) -> str | None:
    package = PACKAGES.get(protocol, protocol)
    try:
        cls = fsspec.get_filesystem_class(protocol)
        module = cls.__module__
        if not module.startswith("fsspec."):  # a package's own class (hdfs-native's hdfs)
            package = module.split(".")[0]
        package = _BACKENDS.get(module, package)
        missing = importlib.util.find_spec(package.replace("-", "_")) is None
    except (ImportError, ValueError):
        missing = True
    if not missing:
        return None
    if protocol == "hdfs":
        return (
            "scheme 'hdfs' needs an HDFS client on the server and every node: install "
            "dlapp[hdfs] (hdfs-native, no JVM) or pyarrow with a Hadoop client; or use the "
            "namenode's WebHDFS, webhdfs://namenode:9870/... (docs/data.md#hdfs)"
        )
    return (
        f"scheme {protocol!r} is not supported on this server: it needs the Python "
        f"package {package!r}, which is not installed"
    )


def url_problem(url: str, config: DataConfig) -> str | None:
    """Why ``url`` cannot be used on this server (the policy, a missing client), or None."""
    why = problem(url, config)
    if why is None:
        why = check_installed(url_scheme(served_url(url, config)))
    return why


def served_url(url: str, config: DataConfig) -> str:
    """The URL whose store holds ``url``'s data: the hdfs_map's for an ``hdfs:///`` URL."""
    return (hdfs_target(url, config) or url) if in_hdfs_namespace(url) else url


def open_location(url: str, config: DataConfig) -> Location:
    """Check ``url`` against the policy and open its store with its profile's options. An
    ``hdfs:///`` URL opens the store that the server's hdfs_map names for it; the Location
    keeps the URL the spec wrote, for messages."""
    why = url_problem(url, config)
    if why:
        raise DataError(f"{url}: {why}")
    store_url = served_url(url, config)
    protocol = url_scheme(store_url)
    if protocol == "file":
        return Location(url, protocol, local_path(store_url), fsspec.filesystem("file"))
    cls = fsspec.get_filesystem_class(protocol)
    kwargs: dict[str, Any] = dict(cls._get_kwargs_from_urls(store_url))
    profile = pick_profile(store_url, protocol, config.profiles)
    if profile is not None:
        kwargs.update(profile.options)
    try:
        fs = cls(skip_instance_cache=True, **kwargs)
    except Exception as exc:  # any store's connection error: say which URL, not the options
        raise DataError(f"{url}: cannot connect: {type(exc).__name__}: {exc}") from None
    return Location(url, protocol, cls._strip_protocol(store_url), fs)


# -- errors -----------------------------------------------------------------------------------

RETRIES = 3
# errors that say the data is not there or not ours: another try cannot help
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, DataError)
_TRANSIENT_MODULES = ("paramiko", "botocore", "aiobotocore", "aiohttp", "requests", "urllib3")


def transient(exc: BaseException) -> bool:
    """A network hiccup worth another try (not a missing file, a refusal, a bug). Bytes that
    differ from the store's checksum are one too: they were most likely damaged on the way."""
    if isinstance(exc, ChecksumMismatch):
        return True
    if isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, OSError | EOFError | TimeoutError | ConnectionError):
        return True
    return type(exc).__module__.split(".")[0] in _TRANSIENT_MODULES


def retrying(
    action: Callable[[], T],
    sleep: Callable[[float], None] = time.sleep,
    tries: int = RETRIES,
    on_retry: Callable[[BaseException, int], None] | None = None,
) -> T:
    """``action()``, tried again (1 s, then 2 s later) while it fails transiently;
    ``on_retry(error, attempt)`` hears of each failed try that gets another."""
    for attempt in range(1, tries + 1):
        try:
            return action()
        except Exception as exc:
            if attempt == tries or not transient(exc):
                raise
            if on_retry is not None:
                on_retry(exc, attempt)
            sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")
