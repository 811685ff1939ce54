-- The `pausing` build status (a pause waits for the step in progress): the active builds'
-- partial index covers it, so that the engine's claim query keeps using the index.

DROP INDEX builds_active;
CREATE INDEX builds_active ON builds (status, created_at)
    WHERE status IN ('queued', 'running', 'pausing', 'paused');
