"""Where this machine's Ray processes listen: loopback for the embedded cluster.

Ray's servers (GCS, raylet, object manager, core workers, dashboard and runtime-env agents)
bind to the node's address when it is a loopback one, and to every interface otherwise. The
embedded cluster runs on one machine, so its node address is ``127.0.0.1`` and nothing outside
the machine, an app's container on the Docker bridge included, reaches its ports.

Ray 2.60 turns a loopback ``_node_ip_address`` into the machine's outward address unless it
believes clusters are off (its macOS and Windows default, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``):
``loopback_node`` says so for the duration of ``ray.init`` only, so that a later driver of an
external cluster in the same process still finds its own address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager

from dlapp.config import ServerSettings

LOOPBACK = "127.0.0.1"


def node_ip(settings: ServerSettings) -> str | None:
    """The address this machine's Ray processes advertise and listen on; None: Ray's choice."""
    if settings.ray_node_ip:
        return settings.ray_node_ip
    return None if settings.ray_address else LOOPBACK


def is_loopback(address: str) -> bool:
    """Whether a listening address is reachable from this machine only (``::ffff:127.0.0.1``,
    the IPv4-mapped form, included); ``0.0.0.0`` and ``::`` (every interface) are not."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address == "localhost"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@contextmanager
def loopback_node(address: str | None) -> Iterator[None]:
    """Around ``ray.init``: keep a loopback node address loopback (see the module's doc)."""
    if address is None or not is_loopback(address):
        yield
        return
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before
