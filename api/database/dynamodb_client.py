"""Where the DynamoDB store is imported from: it lives in the package `api.database.dynamodb`
(a module per domain on shared plumbing; its docstring maps them).

Slow-query detection: the timed call wrapper the operator's guide calls "query_with_timing"
is `Store.timed` in api/database/store.py. Every DynamoDB request goes through it
(`DynamoDBClient._call` in api/database/dynamodb/client.py), which logs `Slow query detected`
at SLOW_QUERY_THRESHOLD_SECONDS and feeds the db metrics.
"""

from api.database.dynamodb import COUNTER_SHARDS, DynamoDBStore

__all__ = ["COUNTER_SHARDS", "DynamoDBStore"]
