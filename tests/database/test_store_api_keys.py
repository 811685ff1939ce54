"""The KeyStore contract on every backend: keys by id whichever tenant's, listed per tenant
and platform-wide in creation order, revoked once (and only within a tenant when one is given),
nothing but the secret's hash stored."""

from collections.abc import Callable

from api.database.store import ApiKey, Store
from tests.database.test_store_contract import ts


def key(n: int, *, tenant_id: str | None = "acme", role: str = "builder", **extra: str | None) -> ApiKey:
    return ApiKey(key_id=f"{n:016x}", tenant_id=tenant_id, role=role, name=f"key {n}",
                  secret_hash="ab" * 32, created_at=ts(n), **extra)


async def test_a_key_is_read_by_its_id_and_listed_per_tenant_and_for_the_platform(store: Store) -> None:
    keys = [key(1), key(2, tenant_id="globex", role="admin"), key(3, expires_at=ts(99)),
            key(4, tenant_id=None, role="operator")]
    for each in reversed(keys):
        await store.put_api_key(key=each)
    for each in keys:
        assert await store.get_api_key(key_id=each.key_id) == each
    assert await store.get_api_key(key_id="f" * 16) is None
    assert await store.get_api_key(key_id="x" * 2000) is None  # no such id fits a key
    assert await store.list_api_keys(tenant_id="acme") == [keys[0], keys[2]]
    assert await store.list_api_keys(tenant_id="globex") == [keys[1]]
    assert await store.list_api_keys(tenant_id="initech") == []
    assert await store.list_api_keys(tenant_id=None) == keys


async def test_revoking_marks_the_key_once_and_only_within_the_tenant_given(
        store: Store, make_store: Callable[[], Store]) -> None:
    await store.put_api_key(key=key(1))
    assert await store.revoke_api_key(key_id=key(1).key_id, tenant_id="globex", revoked_at=ts(5)) is None
    assert (await store.get_api_key(key_id=key(1).key_id)).revoked_at is None
    revoked = await store.revoke_api_key(key_id=key(1).key_id, tenant_id="acme", revoked_at=ts(5))
    assert revoked == key(1, revoked_at=ts(5))
    # Again, or through another instance without a tenant (the command line): the first time stays.
    other = make_store()
    await other.open()
    try:
        again = await other.revoke_api_key(key_id=key(1).key_id, tenant_id=None, revoked_at=ts(9))
        assert again is not None and again.revoked_at == ts(5)
        assert (await other.get_api_key(key_id=key(1).key_id)).revoked_at == ts(5)
    finally:
        await other.close()
    assert await store.revoke_api_key(key_id="f" * 16, tenant_id=None, revoked_at=ts(9)) is None
