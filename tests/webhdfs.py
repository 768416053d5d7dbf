"""A WebHDFS endpoint on loopback, serving a local directory as an HDFS namespace.

No namenode can run here (no Hadoop), so this speaks the part of the WebHDFS REST API
(hadoop.apache.org, "WebHDFS REST API") that fsspec's ``webhdfs`` client uses, as a namenode
and its datanodes do: ``OPEN``, ``CREATE`` and ``APPEND`` answer 307 with the datanode's
``Location`` (here the same server with ``datanode=true``), metadata operations answer JSON,
errors a ``RemoteException``, and a rename onto an existing file fails as HDFS's does. Every
request is recorded (operation, path, ``user.name``) for the tests to check.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse

PREFIX = "/webhdfs/v1"


@dataclass
class WebHdfs:
    root: Path  # the namespace's "/"
    port: int
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # op, path, user

    @property
    def endpoint(self) -> str:
        return f"webhdfs://127.0.0.1:{self.port}"

    def local(self, hdfs_path: str) -> Path:
        return self.root / hdfs_path.lstrip("/")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = (
            b""
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        ctype = "application/octet-stream" if isinstance(body, bytes) else "application/json"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, exception: str, message: str) -> None:
        body = {"RemoteException": {"exception": exception, "message": message}}
        self._reply(status, body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _status(self, p: Path, suffix: str) -> dict[str, Any]:
        st = p.stat()
        return {
            "pathSuffix": suffix,
            "type": "DIRECTORY" if p.is_dir() else "FILE",
            "length": 0 if p.is_dir() else st.st_size,
            "modificationTime": int(st.st_mtime * 1000),
            "accessTime": int(st.st_atime * 1000),
            "permission": oct(st.st_mode & 0o777)[2:],
            "owner": "hdfs",
            "group": "supergroup",
            "replication": 0 if p.is_dir() else 3,
            "blockSize": 0 if p.is_dir() else 134217728,
        }

    def _handle(self, method: str) -> None:
        url = urlparse(self.path)
        if not url.path.startswith(PREFIX):
            return self._error(404, "IllegalArgumentException", f"not a WebHDFS path: {url.path}")
        hdfs_path = unquote(url.path[len(PREFIX) :]) or "/"
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        op = q.get("op", "").upper()
        state: WebHdfs = self.server.state
        state.requests.append((op, hdfs_path, q.get("user.name")))
        if ".." in hdfs_path.split("/"):
            return self._error(400, "IllegalArgumentException", f"Invalid path {hdfs_path}")
        p = state.local(hdfs_path)
        datanode = q.get("datanode") == "true"
        if op in ("CREATE", "APPEND", "OPEN") and not datanode:  # the namenode redirects
            location = f"http://127.0.0.1:{state.port}{PREFIX}{quote(hdfs_path)}?{url.query}"
            if op == "APPEND" and not p.is_file():
                return self._error(404, "FileNotFoundException", f"File {hdfs_path} not found")
            if op == "OPEN" and not p.is_file():
                return self._error(404, "FileNotFoundException", f"File {hdfs_path} not found")
            return self._reply(307, None, {"Location": location + "&datanode=true"})
        if op == "GETFILESTATUS":
            if not p.exists():
                return self._error(404, "FileNotFoundException", f"File {hdfs_path} not found")
            return self._reply(200, {"FileStatus": self._status(p, "")})
        if op == "LISTSTATUS":
            if not p.exists():
                return self._error(404, "FileNotFoundException", f"File {hdfs_path} not found")
            entries = [self._status(c, c.name) for c in sorted(p.iterdir())] if p.is_dir() else []
            if p.is_file():
                entries = [self._status(p, "")]
            return self._reply(200, {"FileStatuses": {"FileStatus": entries}})
        if op == "OPEN":
            offset = int(q.get("offset", 0))
            with p.open("rb") as f:
                f.seek(offset)
                data = f.read(int(q["length"])) if "length" in q else f.read()
            return self._reply(200, data)
        if op == "CREATE":
            if p.exists() and q.get("overwrite") != "true":
                return self._error(403, "FileAlreadyExistsException", f"{hdfs_path} exists")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(self._body())
            return self._reply(201, None, {"Location": f"hdfs://127.0.0.1{hdfs_path}"})
        if op == "APPEND":
            with p.open("ab") as f:
                f.write(self._body())
            return self._reply(200)
        if op == "MKDIRS":
            if p.is_file():
                return self._error(403, "FileAlreadyExistsException", f"{hdfs_path} is a file")
            p.mkdir(parents=True, exist_ok=True)
            return self._reply(200, {"boolean": True})
        if op == "RENAME":
            dest = state.local(q["destination"])
            if dest.is_dir():
                dest = dest / p.name
            if not p.exists() or dest.exists() or not dest.parent.is_dir():
                return self._reply(200, {"boolean": False})
            os.rename(p, dest)
            return self._reply(200, {"boolean": True})
        if op == "DELETE":
            if not p.exists():
                return self._reply(200, {"boolean": False})
            if p.is_dir():
                if any(p.iterdir()) and q.get("recursive") != "true":
                    return self._error(403, "PathIsNotEmptyDirectoryException", hdfs_path)
                shutil.rmtree(p)
            else:
                p.unlink()
            return self._reply(200, {"boolean": True})
        if op == "GETHOMEDIRECTORY":
            return self._reply(200, {"Path": f"/user/{q.get('user.name', 'dr.who')}"})
        return self._error(400, "UnsupportedOperationException", f"op {op} is not supported")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: WebHdfs


@contextmanager
def webhdfs(root: Path) -> Iterator[WebHdfs]:
    """A WebHDFS endpoint serving ``root`` on a free loopback port."""
    root.mkdir(parents=True, exist_ok=True)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.state = WebHdfs(root, server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.state
    finally:
        server.shutdown()
        server.server_close()
