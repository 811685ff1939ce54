"""Choose the store named by STORAGE_BACKEND."""

from api.config import Settings
from api.core.aws import standard_region
from api.database.sqlite import SQLiteStore
from api.database.store import Store


class BackendUnavailable(RuntimeError):
    """STORAGE_BACKEND names a backend this build cannot start."""


def create_store(settings: Settings) -> Store:
    if settings.storage_backend == "sqlite":
        return SQLiteStore(path=settings.sqlite_path,
                           slow_query_threshold_seconds=settings.slow_query_threshold_seconds)
    return _dynamodb_store(settings)


def _dynamodb_store(settings: Settings) -> Store:
    # Imported here: aiobotocore takes a while to import and SQLite deployments never need it.
    from api.database.dynamodb_client import DynamoDBStore

    region = settings.dynamodb_region or standard_region()
    if not region:
        raise BackendUnavailable(
            "STORAGE_BACKEND=dynamodb is not available without an AWS region; set DYNAMODB_REGION "
            "(or AWS_REGION, or a region in the AWS profile).")
    return DynamoDBStore(
        region=region, endpoint_url=settings.dynamodb_endpoint_url,
        table_prefix=settings.dynamodb_table_prefix,
        connect_timeout_seconds=settings.dynamodb_connect_timeout_seconds,
        read_timeout_seconds=settings.dynamodb_read_timeout_seconds,
        max_attempts=settings.dynamodb_max_attempts, retry_mode=settings.dynamodb_retry_mode,
        slow_query_threshold_seconds=settings.slow_query_threshold_seconds)
