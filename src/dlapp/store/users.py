"""Users, their groups and their API tokens.

A token is ``dlapp_`` + 32 random bytes (URL-safe base64). It is shown once, when it is made;
the store keeps only its SHA-256, looked up by that hash and compared in constant time. A user
has at most one live token: issuing a new one revokes the old.

A token expires at its own ``expires`` (set when it is made) or ``lifetime_s`` after it was
made (the server's ``token_lifetime_days``), whichever comes first; ``check_token`` says why a
token is refused (``Refusal``), and ``fingerprint`` names a token in the audit log without
giving anything that could be used to log in.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dlapp.errors import BadRequest, ConflictError, NotFoundError
from dlapp.store.models import Token, User

TOKEN_PREFIX = "dlapp_"
MAX_TOKEN_LENGTH = 256
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
LAST_USED_EVERY_S = 60.0  # how stale ``last_used`` may get: not one write per request
FINGERPRINT_HEX = 8  # hex digits of a token's SHA-256 shown in the audit log


class Refusal(enum.Enum):
    """Why a token was not let in."""

    MALFORMED = "malformed"  # not a dlapp token at all
    UNKNOWN = "unknown"
    REVOKED = "revoked"
    EXPIRED = "expired"
    DISABLED = "disabled"  # a live token of a disabled user


@dataclass(frozen=True)
class TokenCheck:
    """What a token turned out to be: its user (when the token is known) and, unless it was
    let in, why not; ``expires`` is when the token stops (or stopped) working."""

    user: User | None
    refusal: Refusal | None
    expires: float | None = None


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", errors="replace")).hexdigest()


def fingerprint(token: str) -> str:
    """A short name for a dlapp token: the first hex digits of its SHA-256. It matches the
    start of the stored ``token_hash``, so an admin can tell whose token it was; it cannot be
    used to log in. Anything that is not a dlapp token (a password pasted by mistake) gets no
    fingerprint at all."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_LENGTH:
        return "(not a dlapp token)"
    return "sha256:" + hash_token(token)[:FINGERPRINT_HEX]


def expiry(token: Token, lifetime_s: float | None) -> float | None:
    """When ``token`` stops working: its own expiry or its creation plus ``lifetime_s``,
    whichever comes first; None: never."""
    ends = [token.expires, None if lifetime_s is None else token.created + lifetime_s]
    return min((t for t in ends if t is not None), default=None)


def check_name(name: str, what: str = "user name") -> str:
    if not NAME.fullmatch(name):
        raise BadRequest(
            f"invalid {what} {name[:80]!r}: use 1 to 64 letters, digits, '.', '_' or '-', "
            "not starting with '.' or '-'"
        )
    return name


def _encode_groups(groups: Iterable[str]) -> str:
    return ",".join(sorted({check_name(g, "group name") for g in groups}))


def groups_of(user: User) -> set[str]:
    return {g for g in user.groups.split(",") if g}


def user_groups(session: Session, name: str) -> set[str]:
    """The groups of user ``name`` (empty for an unknown user): what queue ACLs match on."""
    user = session.get(User, name)
    return groups_of(user) if user is not None else set()


def has_users(session: Session) -> bool:
    return bool(session.scalar(select(func.count()).select_from(User)))


def get_user(session: Session, name: str) -> User:
    user = session.get(User, name)
    if user is None:
        raise NotFoundError(f"no user {name}")
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))


def add_user(
    session: Session,
    name: str,
    now: float,
    *,
    is_admin: bool = False,
    groups: Iterable[str] = (),
    expires: float | None = None,
) -> tuple[User, str]:
    """A new user with a first token (that expires at ``expires``: None, never of itself);
    returns the user and the token's text (shown once)."""
    check_name(name)
    if session.get(User, name) is not None:
        raise ConflictError(f"user {name} already exists")
    user = User(
        name=name, is_admin=is_admin, groups=_encode_groups(groups), disabled=False, created=now
    )
    session.add(user)
    session.flush()
    return user, issue_token(session, name, now, expires)


def set_disabled(session: Session, name: str, disabled: bool) -> User:
    user = get_user(session, name)
    if disabled and user.is_admin and not user.disabled and _enabled_admins(session) <= 1:
        raise ConflictError(f"{name} is the last enabled admin; add another admin first")
    user.disabled = disabled
    return user


def _enabled_admins(session: Session) -> int:
    q = select(func.count()).select_from(User).where(User.is_admin, User.disabled.is_(False))
    return int(session.scalar(q) or 0)


def live_token(session: Session, name: str) -> Token | None:
    q = select(Token).where(Token.user == name, Token.revoked.is_(None)).order_by(Token.id.desc())
    return session.scalars(q).first()


def revoke_tokens(session: Session, name: str, now: float) -> int:
    """Revoke every live token of ``name``; returns how many there were."""
    get_user(session, name)
    q = select(Token).where(Token.user == name, Token.revoked.is_(None))
    tokens = list(session.scalars(q))
    for t in tokens:
        t.revoked = now
    session.flush()
    return len(tokens)


def issue_token(session: Session, name: str, now: float, expires: float | None = None) -> str:
    """A new token for ``name`` (the old one is revoked), expiring at ``expires`` (None: not of
    itself); returns its text, shown once."""
    if expires is not None and expires <= now:
        raise BadRequest("a token must expire in the future")
    revoke_tokens(session, name, now)
    token = new_token()
    session.add(Token(user=name, token_hash=hash_token(token), created=now, expires=expires))
    session.flush()
    return token


def check_token(
    session: Session, token: str, now: float, lifetime_s: float | None = None
) -> TokenCheck:
    """Whom ``token`` lets in, or why it does not. A token let in has its ``last_used`` moved
    (at most once a ``LAST_USED_EVERY_S``)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_LENGTH:
        return TokenCheck(None, Refusal.MALFORMED)
    digest = hash_token(token)
    row = session.scalars(select(Token).where(Token.token_hash == digest)).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return TokenCheck(None, Refusal.UNKNOWN)
    user = session.get(User, row.user)
    if user is None:
        return TokenCheck(None, Refusal.UNKNOWN)
    ends = expiry(row, lifetime_s)
    if row.revoked is not None:
        return TokenCheck(user, Refusal.REVOKED, ends)
    if ends is not None and now >= ends:
        return TokenCheck(user, Refusal.EXPIRED, ends)
    if user.disabled:
        return TokenCheck(user, Refusal.DISABLED, ends)
    if row.last_used is None or now - row.last_used > LAST_USED_EVERY_S:
        row.last_used = now
    return TokenCheck(user, None, ends)


def authenticate(
    session: Session, token: str, now: float, lifetime_s: float | None = None
) -> User | None:
    """The user a live, unexpired token belongs to, or None. Disabled users are returned:
    check them."""
    check = check_token(session, token, now, lifetime_s)
    return check.user if check.refusal in (None, Refusal.DISABLED) else None
