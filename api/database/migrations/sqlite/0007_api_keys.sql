-- API keys (access control): the secret's SHA-256 only, never the secret. An operator key has
-- no tenant. Looked up by id on every authenticated request (the primary key), listed per
-- tenant through the index.
CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY,
    tenant_id TEXT,
    role TEXT NOT NULL,
    name TEXT,
    secret_hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, created_at, key_id);
