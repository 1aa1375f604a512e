"""API keys and tenancy: a Bearer key names an org; every object the key touches belongs to it.

Keys are `hone-` plus 40 random characters, shown once by `hone keys create` and stored only as a
sha256 hash. `current_org` is the FastAPI dependency every /v1 route takes; it also applies the
per-key request-rate limit (a token bucket per key, in the server process).
"""
from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import select

from hone.errors import UserError
from hone.serve import db
from hone.serve.errors import APIError

ORG_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_key(org: str, url: str | None = None) -> str:
    """A new key for `org`; the secret is returned once and only its hash is stored."""
    if not ORG_PATTERN.match(org):
        raise UserError(f"org {org!r} is not a valid name: use lowercase letters, digits, '-' and '_' "
                        "(it becomes part of tuned model names, ft:BASE:ORG:SUFFIX:ID)", field="org")
    secret = "hone-" + secrets.token_urlsafe(30)
    with db.session(url) as s:
        s.add(db.ApiKey(id=db.new_id("key-", 12), org=org, sha256=hash_key(secret), prefix=secret[:9],
                        created_at=db.now()))
        s.commit()
    return secret


def list_keys(url: str | None = None) -> list[dict]:
    with db.session(url) as s:
        rows = s.scalars(select(db.ApiKey).order_by(db.ApiKey.seq)).all()
    return [{"id": k.id, "org": k.org, "prefix": k.prefix + "...", "created_at": k.created_at,
             "revoked": k.revoked_at is not None} for k in rows]


def revoke_key(key_id: str, url: str | None = None) -> dict:
    """Revoke by key id (`key-...`, from `hone keys list`) or by the secret itself."""
    with db.session(url) as s:
        key = s.scalar(select(db.ApiKey).where((db.ApiKey.id == key_id) | (db.ApiKey.sha256 == hash_key(key_id))))
        if key is None:
            raise UserError(f"no key {key_id!r}; `hone keys list` shows the key ids", field="key")
        if key.revoked_at is None:
            key.revoked_at = db.now()
            s.commit()
        return {"id": key.id, "org": key.org, "revoked": True}


@dataclass
class Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per key: `per_minute` requests refill evenly; a full bucket allows a burst of as many."""

    def __init__(self, per_minute: float):
        self.per_minute = per_minute
        self.buckets: dict[str, Bucket] = {}
        self.lock = threading.Lock()

    def allow(self, key: str) -> float:
        """0 when the request may go ahead, else the seconds until it may."""
        if self.per_minute <= 0:
            return 0.0
        rate = self.per_minute / 60.0
        with self.lock:
            now = time.monotonic()
            bucket = self.buckets.setdefault(key, Bucket(self.per_minute, now))
            bucket.tokens = min(self.per_minute, bucket.tokens + (now - bucket.at) * rate)
            bucket.at = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0.0
            return (1 - bucket.tokens) / rate


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, "invalid_request_error", code="invalid_api_key")


def current_org(request: Request) -> str:
    """The org of the request's Bearer key (FastAPI dependency); 401 in OpenAI's shape otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise _unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer KEY' "
                            "(make one with: hone keys create --org NAME).")
    # A key is compared exactly as sent: one stripped of surrounding whitespace would let two spellings
    # of a secret pass, and hide a client that mangles its key (a trailing newline read from a file).
    if any(c.isspace() for c in secret):
        raise _unauthorized("Malformed API key: it has whitespace in or around it. Send 'Authorization: Bearer KEY' "
                            "with one space after Bearer and the key exactly as `hone keys create` printed it.")
    with db.session(request.app.state.settings.db) as s:
        key = s.scalar(select(db.ApiKey).where(db.ApiKey.sha256 == hash_key(secret)))
    if key is None or key.revoked_at is not None:
        raise _unauthorized(f"Incorrect API key provided: {secret[:9]}...")
    wait = request.app.state.limiter.allow(key.id)
    if wait:
        raise APIError(429, f"Rate limit reached for key {key.id}: "
                       f"{request.app.state.limiter.per_minute:g} requests per minute. Retry in {wait:.1f} s.",
                       "requests", code="rate_limit_exceeded", headers={"retry-after": str(max(1, round(wait)))})
    request.state.org = key.org  # for the request log
    return key.org
