"""API keys for the HTTP service (`fpcancel keys create|list|revoke`): made, found and revoked here.

A key is `fpk_` and 43 characters of URL-safe base64 (32 random bytes), shown once when it is
made. The table keeps its SHA-256 (a key with 256 random bits needs no slow hash) and its first
12 characters, `prefix`, by which a presented key finds its row; the hashes are then compared in
constant time (`hmac.compare_digest`), so neither the key nor its hash leaks through timing.

Scopes (`fpcancel.statuses.ApiScope`): `enqueue` creates cancellations, `read` reads jobs,
stats and events, `ops` may do everything, the dashboard included.

No web framework is imported here: the CLI uses this module too.
"""

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fpcancel.errors import BadInput, JobStateError, ValidationError
from fpcancel.models.tables import ApiKey
from fpcancel.statuses import API_SCOPES, ApiScope
from fpcancel.times import iso
from fpcancel.validation import LABEL_PATTERN

KEY_START = "fpk_"
PREFIX_CHARS = 12  # "fpk_" and 8 characters: enough to find the row, far too few to guess it
_KEY = re.compile(r"fpk_[A-Za-z0-9_-]{43}")


class UnknownKeyError(BadInput):
    """No key has the id the user gave."""


@dataclass(frozen=True)
class KeyInfo:
    """A key as `keys list` shows it: never the key, only its first characters."""

    id: int
    name: str
    scope: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> "KeyInfo":
        return cls(
            row.id,
            row.name,
            row.scope,
            row.prefix,
            row.created_at,
            row.last_used_at,
            row.revoked_at,
        )

    def allows(self, needed: ApiScope) -> bool:
        """`ops` may do everything; the other scopes only their own."""
        return self.scope in (needed.value, ApiScope.OPS.value)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scope": self.scope,
            "prefix": self.prefix,
            "created_at": iso(self.created_at),
            "last_used_at": iso(self.last_used_at),
            "revoked_at": iso(self.revoked_at),
        }


@dataclass(frozen=True)
class CreatedKey:
    info: KeyInfo
    key: str  # shown once, stored nowhere


def new_key() -> str:
    return KEY_START + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def clean_key_name(value: object, field: str = "--name") -> str:
    """A key's name, as the logs show it: 1-64 of A-Z a-z 0-9 _ - . :"""
    if not isinstance(value, str) or not LABEL_PATTERN.fullmatch(value):
        raise ValidationError(field, "must be 1-64 of letters, digits, '_', '-', '.' and ':'")
    return value


def clean_scope(value: object, field: str = "--scope") -> str:
    if value not in API_SCOPES:
        raise ValidationError(field, f"{value!r} is not one of {', '.join(API_SCOPES)}")
    assert isinstance(value, str)
    return value


def create_key(sessions: sessionmaker[Session], name: str, scope: str, now: datetime) -> CreatedKey:
    """Make a key; the returned `key` is the only copy there will ever be."""
    name = clean_key_name(name)
    scope = clean_scope(scope)
    key = new_key()
    row = ApiKey(
        name=name,
        scope=scope,
        prefix=key[:PREFIX_CHARS],
        key_hash=key_hash(key),
        created_at=now,
    )
    try:
        with sessions.begin() as session:
            session.add(row)
            session.flush()
            info = KeyInfo.of(row)
    except IntegrityError:
        raise ValidationError(
            "--name", f"{name!r} is taken by a key that is not revoked; choose another name"
        ) from None
    return CreatedKey(info, key)


def list_keys(session: Session) -> list[KeyInfo]:
    """Every key, oldest first, revoked ones included."""
    return [KeyInfo.of(row) for row in session.scalars(select(ApiKey).order_by(ApiKey.id))]


def get_key(session: Session, key_id: int) -> KeyInfo | None:
    row = session.get(ApiKey, key_id)
    return None if row is None else KeyInfo.of(row)


def revoke_key(sessions: sessionmaker[Session], key_id: int, now: datetime) -> KeyInfo:
    """Revoke a key: from now on it gets 401, and dashboard sessions signed in with it end.
    `JobStateError` (exit 2) when it was revoked already."""
    with sessions.begin() as session:
        row = session.get(ApiKey, key_id, with_for_update=True)
        if row is None:
            raise UnknownKeyError(f"key {key_id}: no such key")
        if row.revoked_at is not None:
            raise JobStateError(f"key {key_id}: revoked already, at {iso(row.revoked_at)}")
        row.revoked_at = now
        session.flush()
        return KeyInfo.of(row)


def authenticate(session: Session, presented: str) -> KeyInfo | None:
    """The live key `presented` is, or None. Every candidate row is compared, each in constant
    time, so how long this takes says nothing about how close a guess was."""
    if not _KEY.fullmatch(presented):
        return None
    wanted = key_hash(presented)
    found: KeyInfo | None = None
    for row in session.scalars(select(ApiKey).where(ApiKey.prefix == presented[:PREFIX_CHARS])):
        if hmac.compare_digest(row.key_hash, wanted) and row.revoked_at is None:
            found = KeyInfo.of(row)
    return found


def touch(session: Session, key_id: int, now: datetime) -> None:
    """Record that the key was used (the caller decides how often)."""
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))
