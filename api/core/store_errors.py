"""The errors every store raises, whatever its backend; each names its answer's contract code
(`code`, as api.core.errors' do) and its docstring the status.

In core, below the stores and the HTTP layer both: a backend raises these and nothing of the
HTTP layer's, and `api.core.handlers` maps them to the envelope, so the same bad input gets the
same status and code on SQLite and on DynamoDB (the store contract suite checks it)."""


class StoreError(Exception):
    """The store is unavailable or failed; 503 DATABASE_ERROR. The message is for the log only:
    it may name tables, files or the backend's own error text."""

    code = "DATABASE_ERROR"


class StoreThrottled(StoreError):
    """The backend kept refusing for capacity after the store's retries; 503 with Retry-After."""

    retry_after_seconds = 1


class RecordConflict(StoreError):
    """The record kept changing under the write (other writers won every retry), or exists
    already; 409 RESOURCE_CONFLICT: read it again, then retry."""

    code = "RESOURCE_CONFLICT"


class RecordTooLarge(StoreError):
    """A record over the store's size limit; 413 PAYLOAD_TOO_LARGE, naming its largest field.
    Nothing of the write is stored."""

    code = "PAYLOAD_TOO_LARGE"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class InvalidValue(StoreError):
    """A value the store cannot hold (a key part over the backend's key limit, a number that
    is not finite); 400 VALIDATION_ERROR naming the field."""

    code = "VALIDATION_ERROR"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"Invalid {field}: {message}")
        self.field = field
        self.reason = message


class InvalidCursor(StoreError):
    """A `last_key` that this store did not issue; 400 VALIDATION_ERROR on `last_key`."""

    code = "VALIDATION_ERROR"
