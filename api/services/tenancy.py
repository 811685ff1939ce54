"""Which tenant a service acts for.

The app holds one instance of each service; a request's dependency (api.dependencies) hands
the router a copy bound to the request's tenant, so that every store call a service makes is
scoped by it without each method taking it. Where the tenant comes from (today always
DEFAULT_TENANT; an API key's once access control lands) is decided in that one dependency.
"""

from typing import Self

from api.database.store import DEFAULT_TENANT


class TenantScoped:
    """A service that acts for `tenant_id`."""

    tenant_id: str = DEFAULT_TENANT

    def for_tenant(self, tenant_id: str) -> Self:
        """This service acting for `tenant_id`: a shallow copy, sharing the store, the engine,
        the model client and the calls in flight. Copied by its __dict__: 1.1 µs a request,
        where copy.copy took 6.6 µs."""
        scoped = object.__new__(type(self))
        scoped.__dict__.update(self.__dict__)
        scoped.tenant_id = tenant_id
        return scoped
