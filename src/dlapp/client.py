"""The HTTP SDK: what the CLI, the tests and users' scripts talk to a server with."""

from __future__ import annotations

import json
import os
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import httpx

from dlapp import tls
from dlapp.errors import DlappError, ServerError, ServerUnavailable, error_from_dict

if TYPE_CHECKING:  # a caller that submits has built one; the CLI's other commands need not
    from dlapp.spec import AppSpec

TERMINAL = "FINISHED"


class _Sending:
    """The tarball being uploaded: each of httpx's reads (64 KiB at a time) is told to
    ``progress`` with the file's size (which httpx finds through ``fileno`` too: the request
    has a length)."""

    def __init__(self, f: BinaryIO, progress: Callable[[int, int], None]) -> None:
        self.f, self.progress = f, progress
        self.total = os.fstat(f.fileno()).st_size

    def fileno(self) -> int:
        return self.f.fileno()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.progress(self.f.tell(), self.total)
        return data


@dataclass(frozen=True)
class LogText:
    """Lines of a container's log (``DlappClient.log_lines``) and where they lie in it."""

    text: str
    offset: int  # the byte where ``text`` starts in the log
    next_offset: int  # ... and where it ends
    size: int  # the log's size when read
    complete: bool  # the container has ended and nothing follows
    attempt: int  # the attempt whose log it is

    @property
    def cut_before(self) -> int:
        """Bytes of the log before ``text``."""
        return self.offset

    @property
    def cut_after(self) -> int:
        """Bytes of the log after ``text`` (when it was read)."""
        return max(0, self.size - self.next_offset)


class DlappClient:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        ca_file: Path | None = None,
    ) -> None:
        """``token`` is sent as ``Authorization: Bearer``; every route but /healthz needs it.
        An https server's certificate is verified against ``ca_file`` when given, else against
        the system's certificate authorities."""
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if self.base_url.startswith("https:"):
            verify = tls.client_context(ca_file)
        else:  # plain http: no CA bundle to load (a CLI command's tens of ms), and a context
            # that trusts no certificate, should a request ever leave for an https URL
            verify = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout_s,
            transport=transport,
            verify=verify,
        )

    def __repr__(self) -> str:  # never the token
        return f"DlappClient({self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DlappClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc, "cannot reach") from None
        if resp.status_code >= 400:
            raise _error(resp)
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # -- API ------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/healthz")
        return result

    def submit(
        self, spec: AppSpec, tarball: Path, progress: Callable[[int, int], None] | None = None
    ) -> dict[str, Any]:
        """Submit ``spec`` with its packed workspace; ``progress(sent, total)`` is told the
        tarball's bytes as they are sent. An array or a sweep (``spec.is_array``) is made by
        one request, its workspace sent once: the answer is the array's view."""
        with tarball.open("rb") as f:
            upload: BinaryIO | _Sending = _Sending(f, progress) if progress else f
            result: dict[str, Any] = self._json(
                "POST",
                "/api/v1/arrays" if spec.is_array else "/api/v1/apps",
                data={"spec": json.dumps(spec.to_dict())},
                files={"workspace": ("workspace.tar.gz", upload, "application/gzip")},
                timeout=None,
            )
        return result

    def list_page(
        self,
        user: str | None = None,
        queue: str | None = None,
        states: Sequence[str] = (),
        limit: int | None = None,
        before: int | None = None,
        array: str | None = None,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """One page of apps, newest first (``limit`` of them; the server's default: 1000), and
        the cursor of the next page (pass it as ``before``), or None after the last; with
        ``array``, only that array's members."""
        params: dict[str, Any] = {}
        if array:
            params["array"] = array
        if user:
            params["user"] = user
        if queue:
            params["queue"] = queue
        if states:
            params["state"] = list(states)
        if limit is not None:
            params["limit"] = limit
        if before is not None:
            params["before"] = before
        body = self._json("GET", "/api/v1/apps", params=params)
        apps: list[dict[str, Any]] = body["apps"]
        return apps, body.get("next")

    def list_apps(
        self,
        user: str | None = None,
        queue: str | None = None,
        states: Sequence[str] = (),
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` apps (the server's default: 1000); ``iter_apps`` for all."""
        return self.list_page(user, queue, states, limit)[0]

    def iter_apps(
        self,
        user: str | None = None,
        queue: str | None = None,
        states: Sequence[str] = (),
        page_size: int = 1000,
        array: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every app that matches, newest first, fetched a page at a time."""
        before: int | None = None
        while True:
            apps, before = self.list_page(user, queue, states, page_size, before, array)
            yield from apps
            if before is None:
                return

    def get(self, app_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/api/v1/apps/{app_id}")
        return result

    def get_array(self, array_id: str) -> dict[str, Any]:
        """An array: what it is and its members' counts by state."""
        result: dict[str, Any] = self._json("GET", f"/api/v1/arrays/{array_id}")
        return result

    def list_arrays(self, limit: int = 100) -> list[dict[str, Any]]:
        arrays: list[dict[str, Any]] = self._json("GET", "/api/v1/arrays", params={"limit": limit})[
            "arrays"
        ]
        return arrays

    def kill_array(self, array_id: str, soft: bool = False) -> dict[str, Any]:
        """Kill (or softkill) every unfinished member of the array."""
        verb = "softkill" if soft else "kill"
        result: dict[str, Any] = self._json("POST", f"/api/v1/arrays/{array_id}/{verb}")
        return result

    def events(self, app_id: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self._json("GET", f"/api/v1/apps/{app_id}/events")["events"]
        return events

    def kill(self, app_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", f"/api/v1/apps/{app_id}/kill")
        return result

    def softkill(self, app_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", f"/api/v1/apps/{app_id}/softkill")
        return result

    def cluster(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/api/v1/cluster")
        return result

    def queues(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/api/v1/queues")
        return result

    def reload_queues(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", "/api/v1/queues/reload")
        return result

    def usage(
        self, since: str | None = None, until: str | None = None, by: str = "user"
    ) -> dict[str, Any]:
        params = {"by": by, **{k: v for k, v in (("since", since), ("until", until)) if v}}
        result: dict[str, Any] = self._json("GET", "/api/v1/usage", params=params)
        return result

    def logs(
        self,
        app_id: str,
        container: int = 0,
        stream: str = "stdout",
        offset: int = 0,
        attempt: int | None = None,
    ) -> str:
        """Up to 1 MiB of a container's log from ``offset`` (of the current attempt, or of
        ``attempt``)."""
        params: dict[str, Any] = {"container": container, "stream": stream, "offset": offset}
        if attempt is not None:
            params["attempt"] = attempt
        resp = self._request("GET", f"/api/v1/apps/{app_id}/logs", params=params)
        return resp.content.decode("utf-8", errors="replace")

    def log_lines(
        self,
        app_id: str,
        container: int = 0,
        stream: str = "stdout",
        *,
        tail: int | None = None,
        head: int | None = None,
        attempt: int | None = None,
        max_bytes: int | None = None,
    ) -> LogText:
        """The last ``tail`` (or first ``head``) lines of a container's log, whole, and where
        they lie in it: ``LogText.cut_before`` / ``cut_after`` say what was left out."""
        params: dict[str, Any] = {"container": container, "stream": stream}
        for key, value in (("tail", tail), ("head", head), ("attempt", attempt)):
            if value is not None:
                params[key] = value
        if max_bytes is not None:
            params["length"] = max_bytes
        resp = self._request("GET", f"/api/v1/apps/{app_id}/logs", params=params)
        h = resp.headers
        return LogText(
            text=resp.content.decode("utf-8", errors="replace"),
            offset=int(h.get("X-Dlapp-Offset", 0)),
            next_offset=int(h.get("X-Dlapp-Next-Offset", 0)),
            size=int(h.get("X-Dlapp-Size", 0)),
            complete=h.get("X-Dlapp-Complete") == "true",
            attempt=int(h.get("X-Dlapp-Attempt", 0)),
        )

    def download_logs(
        self,
        app_id: str,
        container: int = 0,
        stream: str = "stdout",
        attempt: int | None = None,
    ) -> Iterator[bytes]:
        """The whole log as it is now, in chunks as they arrive."""
        params: dict[str, Any] = {"container": container, "stream": stream}
        if attempt is not None:
            params["attempt"] = attempt
        try:
            with self._http.stream(
                "GET", f"/api/v1/apps/{app_id}/logs/download", params=params, timeout=None
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _error(resp)
                yield from resp.iter_bytes()
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc, "lost") from None

    def follow_logs(
        self,
        app_id: str,
        container: int = 0,
        stream: str = "stdout",
        tail: int | None = None,
        attempt: int | None = None,
    ) -> Iterator[str]:
        """The log as it grows, until the container ends: from its start, or from its last
        ``tail`` lines."""
        params: dict[str, str | int] = {"container": container, "stream": stream, "follow": "true"}
        for key, value in (("tail", tail), ("attempt", attempt)):
            if value is not None:
                params[key] = value
        try:
            with self._http.stream(
                "GET", f"/api/v1/apps/{app_id}/logs", params=params, timeout=None
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _error(resp)
                yield from resp.iter_text()
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc, "lost") from None

    # -- accounts (``admin_*``: cluster admins only) ---------------------------------------------

    def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/api/v1/me")
        return result

    def rotate_my_token(self) -> str:
        """A new token for the caller, shown this once; the one this client held stops working
        at once, and the client goes on with the new one."""
        token: str = self._json("POST", "/api/v1/me/token")["token"]
        self._http.headers["Authorization"] = f"Bearer {token}"
        return token

    def admin_users(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._json("GET", "/api/v1/admin/users")["users"]
        return found

    def admin_node(self, node: str, state: str) -> dict[str, Any]:
        """Set a node ``drain``, ``cordon`` or ``ready`` (admins)."""
        result: dict[str, Any] = self._json("POST", f"/api/v1/admin/nodes/{node}/{state}")
        return result

    def admin_add_user(
        self,
        name: str,
        admin: bool = False,
        groups: Sequence[str] = (),
        expires_in_days: float | None = None,
    ) -> dict[str, Any]:
        """Returns ``{"user": ..., "token": ...}``: the token is shown this once. It expires
        ``expires_in_days`` from now when given (and by the server's token lifetime anyway)."""
        body: dict[str, Any] = {"name": name, "admin": admin, "groups": list(groups)}
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        result: dict[str, Any] = self._json("POST", "/api/v1/admin/users", json=body)
        return result

    def admin_disable_user(self, name: str) -> dict[str, Any]:
        user: dict[str, Any] = self._json("POST", f"/api/v1/admin/users/{name}/disable")["user"]
        return user

    def admin_enable_user(self, name: str) -> dict[str, Any]:
        user: dict[str, Any] = self._json("POST", f"/api/v1/admin/users/{name}/enable")["user"]
        return user

    def admin_rotate_token(self, name: str) -> str:
        """A new token for ``name`` (the old one stops working), shown this once."""
        token: str = self.admin_issue_token(name)["token"]
        return token

    def admin_issue_token(self, name: str, expires_in_days: float | None = None) -> dict[str, Any]:
        """As ``admin_rotate_token``, the new token expiring ``expires_in_days`` from now when
        given; returns ``{"user", "token", "token_expires"}``."""
        params = {} if expires_in_days is None else {"expires_in_days": expires_in_days}
        result: dict[str, Any] = self._json(
            "POST", f"/api/v1/admin/users/{name}/token", params=params
        )
        return result

    def admin_revoke_token(self, name: str) -> int:
        count: int = self._json("POST", f"/api/v1/admin/users/{name}/token/revoke")["revoked"]
        return count

    def admin_audit(
        self,
        user: str | None = None,
        action: str | None = None,
        target: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        params.update(
            {k: v for k, v in (("user", user), ("action", action), ("target", target)) if v}
        )
        entries: list[dict[str, Any]] = self._json("GET", "/api/v1/admin/audit", params=params)[
            "entries"
        ]
        return entries

    def wait(
        self, app_id: str, timeout_s: float | None = None, poll_s: float = 0.5
    ) -> dict[str, Any]:
        """Poll until the app is FINISHED; returns its final view."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            app = self.get(app_id)
            if app["state"] == TERMINAL:
                return app
            if deadline is not None and time.monotonic() > deadline:
                raise DlappError(f"{app_id} is still {app['state']} after {timeout_s:g}s")
            time.sleep(poll_s)


def _unreachable(base_url: str, exc: httpx.TransportError, verb: str) -> ServerUnavailable:
    """One line on why the server could not be talked to; a refused certificate says what to
    do about it."""
    reason = tls.verify_failure(exc)
    if reason is not None:
        return ServerUnavailable(
            f"cannot verify the TLS certificate of {base_url} ({reason}): give the CA that "
            f"signed it with `dlapp login {base_url} --ca-file CA.pem` or DLAPP_CA_FILE"
        )
    return ServerUnavailable(f"{verb} the dlapp server at {base_url}: {exc}")


def _error(resp: httpx.Response) -> DlappError:
    try:
        body = resp.json()
    except ValueError:
        return ServerError(f"server answered {resp.status_code}: {resp.text[:200]}")
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return error_from_dict(body["error"])
    if isinstance(body, dict) and "detail" in body:  # FastAPI's request validation
        return ServerError(
            f"server refused the request ({resp.status_code}): {_detail(body['detail'])}"
        )
    return ServerError(f"server answered {resp.status_code}")


def _detail(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" for d in detail
        )
    return str(detail)
