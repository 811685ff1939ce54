"""API keys: made, listed, revoked, and checked on every request.

A key is `nxk_<key id>_<secret>`: the id (16 hex digits) finds the stored key, the secret (32
random bytes, URL-safe base64: 256 bits) proves it. Only the secret's SHA-256 is stored, the
norm for high-entropy API tokens (a slow password hash buys nothing against a 256-bit secret,
and would cost every request), compared in constant time.

Checked keys are cached per process for AUTH_CACHE_SECONDS (misses too, so unknown ids cannot
make every request a store read): a revoked or expired key stops working on every worker and
instance within that time (docs/SECURITY.md).
"""

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from api.core.clock import iso_timestamp, utc_now
from api.core.principal import OPERATOR, ROLES, TENANT_ID, Principal
from api.database.store import ApiKey, KeyStore

KEY_PREFIX = "nxk"
_TOKEN = re.compile(r"^nxk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
CACHE_ENTRIES = 10_000


class AuthenticationFailed(Exception):
    """No valid key: `reason` is the `auth_failures_total` label (missing, malformed, unknown,
    revoked, expired)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def public(key: ApiKey) -> dict[str, Any]:
    """A key as the API and the command line show it: everything but the secret's hash."""
    return {name: value for name, value in asdict(key).items() if name != "secret_hash"}


def key_details(key: ApiKey) -> dict[str, Any]:
    """What the audit trail says of a key made or revoked (its id is the line's target)."""
    return {"role": key.role, "name": key.name, "expires_at": key.expires_at}


def principal_of(key: ApiKey) -> Principal:
    return Principal(tenant_id=key.tenant_id, role=key.role, user_id=key.name or key.key_id,
                     key_id=key.key_id)


class KeyService:
    def __init__(self, *, store: KeyStore, cache_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._cache: dict[str, tuple[ApiKey | None, float]] = {}

    async def create(self, *, tenant_id: str | None, role: str, name: str | None = None,
                     expires_days: float | None = None) -> tuple[ApiKey, str]:
        """The stored key and its token, which is shown this once and never again."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        if (role == OPERATOR) != (tenant_id is None):
            raise ValueError("an operator key has no tenant; every other key has one")
        if tenant_id is not None and not TENANT_ID.match(tenant_id):
            raise ValueError("a tenant is 1 to 64 letters, digits, '_', '.' or '-', starting "
                             "with a letter or digit")
        if name is not None and not 1 <= len(name) <= 100:
            raise ValueError("a key's name is 1 to 100 characters")
        if expires_days is not None and expires_days <= 0:
            raise ValueError("a key expires a positive number of days from now")
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        now = time.time()
        expires_at = None if expires_days is None else iso_timestamp(now + expires_days * 86400)
        key = ApiKey(key_id=key_id, tenant_id=tenant_id, role=role, name=name,
                     secret_hash=_hash(secret), created_at=iso_timestamp(now), expires_at=expires_at)
        await self.store.put_api_key(key=key)
        return key, f"{KEY_PREFIX}_{key_id}_{secret}"

    async def list_keys(self, *, tenant_id: str | None) -> list[ApiKey]:
        return await self.store.list_api_keys(tenant_id=tenant_id)

    async def revoke(self, *, key_id: str, tenant_id: str | None) -> ApiKey | None:
        revoked = await self.store.revoke_api_key(key_id=key_id, tenant_id=tenant_id,
                                                  revoked_at=utc_now())
        self._cache.pop(key_id, None)  # this process at once; the others within the cache time
        return revoked

    async def authenticate(self, token: str) -> Principal:
        match = _TOKEN.match(token)
        if match is None:
            raise AuthenticationFailed("malformed")
        key_id, secret = match.groups()
        key = await self._lookup(key_id)
        if key is None or not hmac.compare_digest(key.secret_hash, _hash(secret)):
            raise AuthenticationFailed("unknown")
        if key.revoked_at is not None:
            raise AuthenticationFailed("revoked")
        if key.expires_at is not None and key.expires_at <= utc_now():
            raise AuthenticationFailed("expired")
        return principal_of(key)

    async def _lookup(self, key_id: str) -> ApiKey | None:
        now = self.clock()
        cached = self._cache.get(key_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        key = await self.store.get_api_key(key_id=key_id)
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key_id] = (key, now + self.cache_seconds)
        return key
