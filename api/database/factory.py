"""Choose the store named by STORAGE_BACKEND."""

from api.config import Settings
from api.database.sqlite_store import SQLiteStore
from api.database.store import Store


class BackendUnavailable(RuntimeError):
    """STORAGE_BACKEND names a backend this build cannot start."""


def create_store(settings: Settings) -> Store:
    if settings.storage_backend == "sqlite":
        return SQLiteStore(path=settings.sqlite_path,
                           slow_query_threshold_seconds=settings.slow_query_threshold_seconds)
    raise BackendUnavailable(
        f"STORAGE_BACKEND={settings.storage_backend} is not available in this release; "
        "set STORAGE_BACKEND=sqlite (the default)."
    )
