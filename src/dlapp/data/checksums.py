"""Checksums that stores give for their files, to verify a download against.

``expected(protocol, info)`` reads the store's checksum from the file's listing entry (the
``info`` fsspec gives), or None where the store has none that the bytes alone can reproduce:

- ``s3``: the ETag of an object uploaded in one part is the MD5 of its bytes. A multipart
  upload's ETag (``<hex>-<parts>``) depends on the part size, so it is not used. Objects
  encrypted with SSE-KMS or SSE-C have ETags that are not MD5s: for such buckets an admin turns
  verification off (``verify_checksums: false``).
- ``gs``: ``md5Hash`` (base64), which every object but a composed one has.
- ``sftp``, ``file``: none. ``hdfs`` / ``webhdfs``: HDFS's checksum is an MD5 of per-block MD5s
  of CRCs, which depends on the block size and is not in the listing; not used.

A download is hashed as it streams (``Verifier``); a mismatch raises ``ChecksumMismatch``,
which staging retries like a network error and reports, naming the file, when tries run out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dlapp.errors import ChecksumMismatch

__all__ = ["Checksum", "ChecksumMismatch", "Verifier", "expected"]

_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # "md5"
    hexdigest: str

    def __str__(self) -> str:
        return f"{self.algorithm} {self.hexdigest}"


def expected(protocol: str, info: Mapping[str, Any]) -> Checksum | None:
    """The store's checksum of the file ``info`` describes, or None (see the module doc)."""
    if protocol in ("s3", "s3a"):
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"').lower()
        return Checksum("md5", etag) if _MD5_HEX.match(etag) else None
    if protocol in ("gs", "gcs"):
        md5 = info.get("md5Hash")
        if not md5:
            return None
        try:
            return Checksum("md5", base64.b64decode(str(md5), validate=True).hex())
        except (binascii.Error, ValueError):
            return None
    return None


class Verifier:
    """Hashes a file's bytes as they stream; ``check`` compares with the store's checksum."""

    def __init__(self, want: Checksum) -> None:
        self.want = want
        self._hash = hashlib.new(want.algorithm, usedforsecurity=False)

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)

    def check(self, name: str) -> None:
        got = self._hash.hexdigest()
        if got != self.want.hexdigest:
            raise ChecksumMismatch(
                f"{name}: checksum mismatch: the store says {self.want}, "
                f"the downloaded bytes have {self.want.algorithm} {got}"
            )
