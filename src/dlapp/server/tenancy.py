"""Tenancy: who an app acts as on its nodes, and what a multi-user server refuses at submit.

A server follows the one-person rules while its store holds a single user (the embedded
default): apps run as the server's own user. From the second user on (or always, with
``tenancy: multi``) the multi-user rules apply (docs/security.md):

- every app, and the staging of its local data, acts as its user's Unix account
  (``unix_accounts``), never as the server;
- unset ``file_roots`` allow no local path at all;
- the ``process`` runtime needs nodes that can switch accounts (root) — on the embedded cluster
  that is checked at submit.

Always: the server's own directories (data dir, artifacts, workspaces, cache) are never a
valid local input or output, whatever ``file_roots`` say; the runtimes an app may use are the
cluster's ``runtimes`` narrowed by its queue's.
"""

from __future__ import annotations

import os
from dataclasses import replace

from sqlalchemy.orm import Session

from dlapp import unix_accounts
from dlapp.data.locations import DataConfig, data_config, inside_roots, local_path
from dlapp.errors import Forbidden, SpecError
from dlapp.server.context import Context
from dlapp.spec import AppSpec
from dlapp.store import accounts
from dlapp.unix_accounts import AccountPlan, can_switch


def multi_user(ctx: Context, session: Session) -> bool:
    tenancy = ctx.settings.tenancy
    return tenancy == "multi" or (tenancy == "auto" and accounts.user_count(session) > 1)


def notice_on_new_user(ctx: Context, session: Session) -> str | None:
    """What to tell the admin who just made the second user of an ``auto`` server."""
    if ctx.settings.tenancy != "auto" or accounts.user_count(session) != 2:
        return None
    return (
        "this server now has more than one user, so the multi-user rules apply: each app, "
        "and the staging of its local data, acts as its user's own Unix account (never the "
        "server's); local paths need file_roots; runtime 'process' needs nodes running as "
        "root (docs/security.md)"
    )


def account_plan(
    ctx: Context, session: Session, user: str, multi: bool | None = None
) -> AccountPlan | None:
    """The account ``user``'s apps act as, or None under the one-person rules (``multi``:
    whether the multi-user rules apply, when the caller knows already). Gives the user a uid
    from the range the first time (the leading scheduler's transaction keeps it)."""
    if not (multi_user(ctx, session) if multi is None else multi):
        return None
    s = ctx.settings
    first, last = s.app_uid_range
    name = AccountPlan(user=user, uid=first, prefix=s.app_account_prefix).made_name
    return AccountPlan(
        user=user,
        uid=accounts.uid_for(
            session,
            user,
            first,
            last,
            lambda uid: unix_accounts.uid_free_for(name, uid),
            existing=unix_accounts.adoptable_uid(name),
        ),
        prefix=s.app_account_prefix,
        map_existing=s.map_unix_accounts,
    )


def data(ctx: Context, multi: bool) -> DataConfig:
    """The data settings for an app submitted or started now: under the multi-user rules
    (``multi``), unset ``file_roots`` allow no local path."""
    config = data_config(ctx.settings)
    if ctx.settings.file_roots is None and multi:
        config = replace(config, file_roots=())
    return config


def server_dirs(ctx: Context) -> list[str]:
    """The server's own directories: never an app's input or output."""
    s = ctx.settings
    dirs = [str(d) for d in (s.home, s.artifacts, s.work, s.cache)]
    if s.database_url.startswith("sqlite:///"):
        dirs.append(os.path.dirname(s.database_url.removeprefix("sqlite:///")) or ".")
    return sorted({os.path.realpath(os.path.expanduser(d)) for d in dirs})


def check_submit(ctx: Context, session: Session, user: str, spec: AppSpec) -> None:
    """Refuse, with the reason, what this server's tenancy rules forbid (``spec.queue`` is a
    resolved leaf path)."""
    _check_runtime(ctx, session, spec)
    _check_local_paths(ctx, spec)


def _check_runtime(ctx: Context, session: Session, spec: AppSpec) -> None:
    allowed = ctx.settings.runtimes
    if allowed is not None and spec.runtime not in allowed:
        raise Forbidden(
            f"runtime {spec.runtime!r} is not allowed on this cluster "
            f"(allowed: {', '.join(allowed) or 'none'})"
        )
    in_queue = ctx.queues.tree.runtimes(spec.queue)
    if in_queue is not None and spec.runtime not in in_queue:
        raise Forbidden(
            f"runtime {spec.runtime!r} is not allowed in queue {spec.queue} "
            f"(allowed: {', '.join(sorted(in_queue)) or 'none'})"
        )
    if (
        spec.runtime == "process"
        and ctx.settings.ray_address is None  # the embedded cluster: its node is this machine
        and not can_switch()
        and multi_user(ctx, session)
    ):
        raise SpecError(
            "runtime 'process' is not available on this multi-user server: apps run as their "
            "users' own Unix accounts, and this server is not root and cannot switch accounts; "
            "use runtime: docker (or podman)"
        )


def _check_local_paths(ctx: Context, spec: AppSpec) -> None:
    forbidden: list[str] | None = None  # resolved at the first local path (most apps have none)
    for kind, bindings in (("input", spec.inputs), ("output", spec.outputs)):
        for b in bindings:
            if b.scheme != "file":
                continue
            if forbidden is None:
                forbidden = server_dirs(ctx)
            path = os.path.expanduser(local_path(b.url))
            real = os.path.realpath(path).rstrip("/") + "/"
            if inside_roots(path, forbidden) or any(d.startswith(real) for d in forbidden):
                raise Forbidden(f"{kind} {b.url}: the server's own files are never an app's data")
