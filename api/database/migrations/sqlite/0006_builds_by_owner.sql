-- An engine's own builds, read by every lease renewal and, between them, by its watch for
-- control actions sent through other processes (twice a second while it runs builds).
CREATE INDEX builds_by_owner ON builds (owner) WHERE owner IS NOT NULL;
