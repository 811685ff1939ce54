"""The embedded store: one SQLite file (see `connection`), a module per domain."""

from api.database.sqlite.agents import SQLiteAgents
from api.database.sqlite.api_keys import SQLiteApiKeys
from api.database.sqlite.idempotency import SQLiteIdempotency
from api.database.sqlite.leases import SQLiteLeases
from api.database.sqlite.limits import SQLiteLimits
from api.database.sqlite.projects import SQLiteProjects
from api.database.sqlite.sessions import SQLiteSessions
from api.database.sqlite.statistics import SQLiteStatistics


class SQLiteStore(SQLiteProjects, SQLiteLeases, SQLiteAgents, SQLiteSessions, SQLiteStatistics,
                  SQLiteIdempotency, SQLiteApiKeys, SQLiteLimits):
    """Every domain on one SQLite file: the store `STORAGE_BACKEND=sqlite` runs."""
