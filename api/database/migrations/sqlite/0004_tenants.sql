-- Tenant-scoped data (issue 11): every record carries the tenant it belongs to, and every
-- listing's index leads with it, so that a tenant's page is one range of its own rows. Rows
-- written before tenants existed belong to `default` (api.database.store.DEFAULT_TENANT).
-- Ids stay primary keys (they are random and unique across tenants); a lookup by id also
-- matches the tenant, on the one row the key finds.

ALTER TABLE projects ADD COLUMN tenant_id TEXT NOT NULL DEFAULT 'default';
ALTER TABLE builds ADD COLUMN tenant_id TEXT NOT NULL DEFAULT 'default';
ALTER TABLE artifacts ADD COLUMN tenant_id TEXT NOT NULL DEFAULT 'default';
ALTER TABLE agents ADD COLUMN tenant_id TEXT NOT NULL DEFAULT 'default';
ALTER TABLE agent_capabilities ADD COLUMN tenant_id TEXT NOT NULL DEFAULT 'default';
ALTER TABLE invocations ADD COLUMN tenant_id TEXT NOT NULL DEFAULT 'default';
ALTER TABLE sessions ADD COLUMN tenant_id TEXT NOT NULL DEFAULT 'default';
ALTER TABLE messages ADD COLUMN tenant_id TEXT NOT NULL DEFAULT 'default';

DROP INDEX projects_by_time;
DROP INDEX projects_by_status;
DROP INDEX projects_by_user;
DROP INDEX projects_by_user_status;
CREATE INDEX projects_by_time ON projects (tenant_id, created_at, project_id);
CREATE INDEX projects_by_status ON projects (tenant_id, status, created_at, project_id);
CREATE INDEX projects_by_user ON projects (tenant_id, user_id, created_at, project_id);
CREATE INDEX projects_by_user_status ON projects (tenant_id, user_id, status, created_at, project_id);

DROP INDEX builds_by_project;
CREATE INDEX builds_by_project ON builds (tenant_id, project_id, created_at, build_id);

DROP INDEX agents_by_time;
DROP INDEX agents_by_project;
DROP INDEX agents_by_status;
DROP INDEX agents_by_category;
CREATE INDEX agents_by_time ON agents (tenant_id, created_at, agent_id);
CREATE INDEX agents_by_project ON agents (tenant_id, project_id, created_at, agent_id);
CREATE INDEX agents_by_status ON agents (tenant_id, status, created_at, agent_id);
CREATE INDEX agents_by_category ON agents (tenant_id, category, created_at, agent_id);
CREATE INDEX agent_capabilities_by_tenant ON agent_capabilities (tenant_id, capability, created_at, agent_id);

DROP INDEX invocations_by_agent;
CREATE INDEX invocations_by_agent ON invocations (tenant_id, agent_id, created_at, invocation_id);
DROP INDEX sessions_by_activity;
CREATE INDEX sessions_by_activity ON sessions (tenant_id, agent_id, last_active_at, session_id);
DROP INDEX messages_by_session;
CREATE UNIQUE INDEX messages_by_session ON messages (tenant_id, session_id, seq);

-- The aggregates, per tenant and platform-wide ('*', api.database.store.PLATFORM_SCOPE): the
-- counts so far are the default tenant's, and so far the platform's.
ALTER TABLE counters RENAME TO counters_before_tenants;
CREATE TABLE counters (
    tenant_id TEXT NOT NULL,
    name      TEXT NOT NULL,
    value     REAL NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
INSERT INTO counters SELECT 'default', name, value FROM counters_before_tenants;
INSERT INTO counters SELECT '*', name, value FROM counters_before_tenants;
DROP TABLE counters_before_tenants;

ALTER TABLE daily_stats RENAME TO daily_stats_before_tenants;
CREATE TABLE daily_stats (
    tenant_id TEXT NOT NULL,
    date      TEXT NOT NULL,
    name      TEXT NOT NULL,
    value     REAL NOT NULL,
    PRIMARY KEY (tenant_id, date, name)
);
INSERT INTO daily_stats SELECT 'default', date, name, value FROM daily_stats_before_tenants;
INSERT INTO daily_stats SELECT '*', date, name, value FROM daily_stats_before_tenants;
DROP TABLE daily_stats_before_tenants;

ALTER TABLE daily_failed_stages RENAME TO daily_failed_stages_before_tenants;
CREATE TABLE daily_failed_stages (
    tenant_id TEXT NOT NULL,
    date      TEXT NOT NULL,
    stage     TEXT NOT NULL,
    count     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, date, stage)
);
INSERT INTO daily_failed_stages SELECT 'default', date, stage, count FROM daily_failed_stages_before_tenants;
INSERT INTO daily_failed_stages SELECT '*', date, stage, count FROM daily_failed_stages_before_tenants;
DROP TABLE daily_failed_stages_before_tenants;
