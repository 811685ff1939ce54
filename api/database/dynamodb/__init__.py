"""The Amazon DynamoDB store: one table that several API instances share.

Every resource lives in one table (`<DYNAMODB_TABLE_PREFIX>platform`), keyed so that each
lookup of the storage contract is one GetItem or one Query, and every filtered, sorted list is
one Query on a global secondary index; nothing on a request path scans. docs/DYNAMODB.md
describes the items, keys and indexes.

How the contract's guarantees are kept without a relational transaction:
- Writes that must happen together (an event and the aggregates counting it, a build and its
  project's mirror) are one TransactWriteItems. Conditions make them exact under concurrent
  writers: builds and agents carry a `version` checked on every write (optimistic
  concurrency), a session's `message_count` orders its messages.
- Statistics are aggregate items updated in those transactions: the overall counters and the
  daily figures are sharded over several items (a random shard per write, all shards read
  with one BatchGetItem), so no single item is hot and the overview costs the same requests
  whatever the data size.
- A parent's partition holds a reference row for each child (a project's builds and agents,
  an agent's sessions), so cascade deletes find every child with a consistent Query. The
  first write of a delete removes the parent and leaves a cleanup marker; the children go
  next, then the marker. A delete interrupted by a crash is finished by the next `open()`.
- Each lease holder has a partition listing the builds it holds, maintained in the same
  transactions that change a build's owner, so lease renewal needs no index read.

The modules, each importing only those above it:
- `codec`, `expressions`, `keys`: attribute values, expression placeholders, the key schema;
- `client`: the aiobotocore client and its requests, each timed by `Store.timed`; retries,
  the table's creation, the aggregate updates; `paging`: cursors and keyset pages;
- a module per domain of `api.database.interfaces`, a class each: `builds` (with their logs
  and artifacts), `agents` (with invocations), `projects` (with `builds`, ProjectStore),
  `leases`, `sessions` (with messages), `statistics`; `store` composes them as
  `DynamoDBStore`.
"""

from api.database.dynamodb.keys import COUNTER_SHARDS
from api.database.dynamodb.store import DynamoDBStore

__all__ = ["COUNTER_SHARDS", "DynamoDBStore"]
