"""One exception tree for dlapp; each error carries a code and the HTTP status it maps to.

    DlappError                      500 internal
    ├── SpecError                   400 invalid_spec        (bad app spec, with every problem)
    ├── WorkspaceError              400 bad_workspace       (unsafe or oversized tarball)
    ├── DataError                   400 bad_data_url        (unsupported / refused storage URL)
    │   └── ChecksumMismatch        400 checksum_mismatch   (a download differs from the store's)
    ├── OutputExistsError           409 output_exists       (overwrite=false and output exists)
    ├── InfeasibleError             422 infeasible          (no node could ever hold the request)
    ├── NotFoundError               404 not_found
    ├── InvalidTransition           409 invalid_transition  (illegal app state change)
    ├── ConflictError               409 conflict            (e.g. kill of a finished app)
    ├── PayloadTooLarge             413 too_large
    ├── BadRequest                  400 bad_request         (a malformed request, e.g. a user name)
    ├── Unauthorized                401 unauthorized        (no token, a wrong or revoked one)
    ├── Forbidden                   403 forbidden           (authenticated, but not allowed)
    ├── TooManyRequests             429 too_many_requests   (a per-user limit; maybe Retry-After)
    ├── ServerError                 502 server_error        (client side: the server said no)
    └── ServerUnavailable           503 unavailable         (client side: cannot reach a server)

The server maps any DlappError to ``{"error": {"code", "message"}}`` with ``http_status``;
the client turns such an answer back into the same class; the CLI prints one line and exits 1.
"""

from __future__ import annotations

import math


class DlappError(Exception):
    code = "internal"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers for the answer (``WWW-Authenticate``, ``Retry-After``)."""
        return {}


class SpecError(DlappError):
    code = "invalid_spec"
    http_status = 400

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("invalid app spec: " + "; ".join(self.problems))


class WorkspaceError(DlappError):
    code = "bad_workspace"
    http_status = 400


class DataError(DlappError):
    code = "bad_data_url"
    http_status = 400


class ChecksumMismatch(DataError):
    """Downloaded bytes differ from the store's checksum (retried: it may be the network)."""

    code = "checksum_mismatch"


class OutputExistsError(DlappError):
    code = "output_exists"
    http_status = 409


class InfeasibleError(DlappError):
    code = "infeasible"
    http_status = 422


class NotFoundError(DlappError):
    code = "not_found"
    http_status = 404


class InvalidTransition(DlappError):
    code = "invalid_transition"
    http_status = 409


class ConflictError(DlappError):
    code = "conflict"
    http_status = 409


class PayloadTooLarge(DlappError):
    code = "too_large"
    http_status = 413


class BadRequest(DlappError):
    code = "bad_request"
    http_status = 400


class Unauthorized(DlappError):
    code = "unauthorized"
    http_status = 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(DlappError):
    code = "forbidden"
    http_status = 403


class TooManyRequests(DlappError):
    code = "too_many_requests"
    http_status = 429

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class ServerError(DlappError):
    code = "server_error"
    http_status = 502


class ServerUnavailable(DlappError):
    code = "unavailable"
    http_status = 503


ERRORS_BY_CODE: dict[str, type[DlappError]] = {
    cls.code: cls
    for cls in (
        DlappError,
        SpecError,
        WorkspaceError,
        DataError,
        ChecksumMismatch,
        OutputExistsError,
        InfeasibleError,
        NotFoundError,
        InvalidTransition,
        ConflictError,
        PayloadTooLarge,
        BadRequest,
        Unauthorized,
        Forbidden,
        TooManyRequests,
        ServerError,
        ServerUnavailable,
    )
}


def error_from_dict(data: dict[str, str]) -> DlappError:
    """Rebuild an error sent by the server (``DlappError.to_dict``)."""
    cls = ERRORS_BY_CODE.get(data.get("code", ""), ServerError)
    message = data.get("message", "unknown error")
    if cls is SpecError:
        err: DlappError = DlappError(message)
        err.code = SpecError.code
        err.http_status = SpecError.http_status
        return err
    return cls(message)
