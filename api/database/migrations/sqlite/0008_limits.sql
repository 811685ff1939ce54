-- Rate limits and quotas (api.services.limits): a counter per (tenant, name), the window
-- being part of the name, and a row per slot held (an invocation in flight). Both expire
-- (epoch seconds): the expiry indexes let each write drop what has expired.
CREATE TABLE limit_counters (
    tenant_id TEXT NOT NULL,
    counter TEXT NOT NULL,
    total INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (tenant_id, counter)
);
CREATE INDEX limit_counters_by_expiry ON limit_counters (expires_at);
CREATE TABLE limit_slots (
    tenant_id TEXT NOT NULL,
    pool TEXT NOT NULL,
    slot_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (tenant_id, pool, slot_id)
);
CREATE INDEX limit_slots_by_expiry ON limit_slots (expires_at);
