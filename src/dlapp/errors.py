"""One exception tree for dlapp; each error carries a code and the HTTP status it maps to.

    DlappError                      500 internal
    ├── SpecError                   400 invalid_spec        (bad app spec, with every problem)
    ├── WorkspaceError              400 bad_workspace       (unsafe or oversized tarball)
    ├── DataError                   400 bad_data_url        (unsupported / refused storage URL)
    ├── OutputExistsError           409 output_exists       (overwrite=false and output exists)
    ├── InfeasibleError             422 infeasible          (no node could ever hold the request)
    ├── NotFoundError               404 not_found
    ├── InvalidTransition           409 invalid_transition  (illegal app state change)
    ├── ConflictError               409 conflict            (e.g. kill of a finished app)
    ├── PayloadTooLarge             413 too_large
    ├── ServerError                 502 server_error        (client side: the server said no)
    └── ServerUnavailable           503 unavailable         (client side: cannot reach a server)

The server maps any DlappError to ``{"error": {"code", "message"}}`` with ``http_status``;
the client turns such an answer back into the same class; the CLI prints one line and exits 1.
"""

from __future__ import annotations


class DlappError(Exception):
    code = "internal"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


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
        OutputExistsError,
        InfeasibleError,
        NotFoundError,
        InvalidTransition,
        ConflictError,
        PayloadTooLarge,
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
