"""Routes for accounts: ``/api/v1/me`` for anyone, ``/api/v1/admin/...`` for cluster admins."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from dlapp.server import accounts, nodes
from dlapp.server.auth import Caller, get_caller, require_admin
from dlapp.server.routes import Ctx, Db
from dlapp.store import audit, users

me_router = APIRouter(dependencies=[Depends(get_caller)])
router = APIRouter(dependencies=[Depends(require_admin)])
Admin = Annotated[Caller, Depends(require_admin)]


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="login name: letters, digits, '.', '_', '-'")
    admin: bool = Field(False, description="a cluster admin")
    groups: list[str] = Field(default_factory=list, description="groups, for queue ACLs")
    expires_in_days: float | None = Field(
        None, gt=0, description="the first token expires this many days from now"
    )


@me_router.get("/me", tags=["users"])
def whoami(caller: Annotated[Caller, Depends(get_caller)]) -> dict[str, Any]:
    return {"name": caller.name, "is_admin": caller.is_admin, "groups": sorted(caller.groups)}


@me_router.post("/me/token", tags=["users"])
def rotate_my_token(
    ctx: Ctx, session: Db, caller: Annotated[Caller, Depends(get_caller)]
) -> dict[str, Any]:
    """A new token for the caller; the one this request carried stops working at once. The
    token is in this answer only."""
    return {"user": caller.name, "token": accounts.rotate_token(ctx, session, caller, caller.name)}


@router.get("/users", tags=["admin"])
def list_users(ctx: Ctx, session: Db) -> dict[str, Any]:
    return {"users": [accounts.user_view(ctx, session, u) for u in users.list_users(session)]}


@router.post("/users", status_code=201, tags=["admin"])
def add_user(ctx: Ctx, session: Db, caller: Admin, body: NewUser) -> dict[str, Any]:
    """Make a user and their first token. The token is in this answer only."""
    return accounts.add_user(
        ctx, session, caller, body.name, body.admin, body.groups, body.expires_in_days
    )


@router.post("/users/{name}/disable", tags=["admin"])
def disable_user(ctx: Ctx, session: Db, caller: Admin, name: str) -> dict[str, Any]:
    user = accounts.set_disabled(ctx, session, caller, name, disabled=True)
    return {"user": accounts.user_view(ctx, session, user)}


@router.post("/users/{name}/enable", tags=["admin"])
def enable_user(ctx: Ctx, session: Db, caller: Admin, name: str) -> dict[str, Any]:
    user = accounts.set_disabled(ctx, session, caller, name, disabled=False)
    return {"user": accounts.user_view(ctx, session, user)}


@router.post("/users/{name}/token", tags=["admin"])
def rotate_token(
    ctx: Ctx,
    session: Db,
    caller: Admin,
    name: str,
    expires_in_days: Annotated[float | None, Query(gt=0)] = None,
) -> dict[str, Any]:
    """A new token for the user (expiring ``expires_in_days`` from now, if given); the old one
    stops working. The token is in this answer only."""
    token = accounts.rotate_token(ctx, session, caller, name, expires_in_days)
    view = accounts.user_view(ctx, session, users.get_user(session, name))
    return {"user": name, "token": token, "token_expires": view["token_expires"]}


@router.post("/users/{name}/token/revoke", tags=["admin"])
def revoke_token(ctx: Ctx, session: Db, caller: Admin, name: str) -> dict[str, Any]:
    return {"user": name, "revoked": accounts.revoke_tokens(ctx, session, caller, name)}


@router.get("/audit", tags=["admin"])
def get_audit(
    session: Db,
    user: Annotated[str | None, Query()] = None,
    action: Annotated[str | None, Query()] = None,
    target: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> dict[str, Any]:
    """Newest first."""
    entries = audit.entries(session, user=user, action=action, target=target, limit=limit)
    return {"entries": [accounts.audit_view(e) for e in entries]}


@router.post("/nodes/{node}/{state}", tags=["admin"])
def set_node_state(ctx: Ctx, session: Db, caller: Admin, node: str, state: str) -> dict[str, Any]:
    """``drain`` (no new apps), ``cordon`` (no new apps, evict running ones), ``ready``."""
    return nodes.set_state(ctx, session, node, state, caller.name)
