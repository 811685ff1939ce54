"""Who a request acts as: the principal its API key names (api.services.keys), or, with
AUTH_MODE=none, the default tenant's admin without a name."""

import re
from dataclasses import dataclass

# Each role may do what the ones before it may (docs/SECURITY.md, the roles table).
TENANT_ROLES = ("viewer", "builder", "admin")
# Bound to no tenant: reads /metrics, /health/detailed and the platform-wide statistics.
OPERATOR = "operator"
ROLES = (*TENANT_ROLES, OPERATOR)
# The orchestrators' probes: open to everyone in every mode, the only paths that need no key.
PROBES = frozenset({"/health", "/health/live", "/health/ready"})
# A tenant's name: an identifier, so that it fits every backend's keys (no '#').
TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str | None  # None for an operator
    role: str
    # The key's name, else its id: the records' and the log lines' `user_id`. None without
    # keys, where records keep the `user_id` their bodies name.
    user_id: str | None
    # The key's id: what the per-key rate limits count under. None without a key.
    key_id: str | None = None

    def may(self, needed: str) -> bool:
        """Whether this principal's role includes the tenant role `needed`."""
        return (self.role in TENANT_ROLES
                and TENANT_ROLES.index(self.role) >= TENANT_ROLES.index(needed))
