-- Every filter and sort of the contract has an index ending in the keyset columns
-- (created_at, id), so a page at any depth is one index range read.

CREATE TABLE projects (
    project_id      TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    project_name    TEXT NOT NULL,
    requirement     TEXT NOT NULL,
    priority        INTEGER NOT NULL,
    tags            TEXT NOT NULL,
    status          TEXT NOT NULL,
    progress        REAL NOT NULL,
    current_stage   TEXT,
    latest_build_id TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX projects_by_time ON projects (created_at, project_id);
CREATE INDEX projects_by_status ON projects (status, created_at, project_id);
CREATE INDEX projects_by_user ON projects (user_id, created_at, project_id);
CREATE INDEX projects_by_user_status ON projects (user_id, status, created_at, project_id);

CREATE TABLE builds (
    build_id      TEXT PRIMARY KEY,
    project_id    TEXT NOT NULL,
    status        TEXT NOT NULL,
    progress      REAL NOT NULL,
    current_stage TEXT,
    stages        TEXT NOT NULL,
    context       TEXT NOT NULL,
    error         TEXT,
    request_id    TEXT,
    owner         TEXT,
    lease_until   TEXT,
    recoveries    INTEGER NOT NULL DEFAULT 0,
    duration_seconds REAL,
    created_at    TEXT NOT NULL,
    started_at    TEXT,
    finished_at   TEXT,
    updated_at    TEXT NOT NULL
);
CREATE INDEX builds_by_project ON builds (project_id, created_at, build_id);
CREATE INDEX builds_active ON builds (status, created_at) WHERE status IN ('queued', 'running', 'paused');

CREATE TABLE build_logs (
    build_id  TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    stage     TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    level     TEXT NOT NULL,
    message   TEXT NOT NULL,
    PRIMARY KEY (build_id, seq)
);
CREATE INDEX build_logs_by_stage ON build_logs (build_id, stage, seq);

CREATE TABLE artifacts (
    project_id TEXT NOT NULL,
    path       TEXT NOT NULL,
    build_id   TEXT NOT NULL,
    stage      TEXT NOT NULL,
    content    TEXT NOT NULL,
    size       INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (project_id, path)
);

CREATE TABLE agents (
    agent_id               TEXT PRIMARY KEY,
    project_id             TEXT NOT NULL,
    agent_name             TEXT NOT NULL,
    description            TEXT NOT NULL,
    category               TEXT NOT NULL,
    capabilities           TEXT NOT NULL,
    tools                  TEXT NOT NULL,
    system_prompt          TEXT NOT NULL,
    status                 TEXT NOT NULL,
    error_message          TEXT,
    build_id               TEXT,
    total_invocations      INTEGER NOT NULL DEFAULT 0,
    successful_invocations INTEGER NOT NULL DEFAULT 0,
    failed_invocations     INTEGER NOT NULL DEFAULT 0,
    total_duration_ms      REAL NOT NULL DEFAULT 0,
    last_invoked_at        TEXT,
    created_at             TEXT NOT NULL,
    updated_at             TEXT NOT NULL
);
CREATE INDEX agents_by_time ON agents (created_at, agent_id);
CREATE INDEX agents_by_project ON agents (project_id, created_at, agent_id);
CREATE INDEX agents_by_status ON agents (status, created_at, agent_id);
CREATE INDEX agents_by_category ON agents (category, created_at, agent_id);

-- One row per (agent, capability): "match any" filtering through an index.
CREATE TABLE agent_capabilities (
    capability TEXT NOT NULL,
    created_at TEXT NOT NULL,
    agent_id   TEXT NOT NULL,
    PRIMARY KEY (capability, created_at, agent_id)
);
CREATE INDEX agent_capabilities_by_agent ON agent_capabilities (agent_id);

CREATE TABLE invocations (
    invocation_id TEXT PRIMARY KEY,
    agent_id      TEXT NOT NULL,
    project_id    TEXT NOT NULL,
    session_id    TEXT,
    input_text    TEXT NOT NULL,
    output        TEXT,
    status        TEXT NOT NULL,
    error         TEXT,
    duration_ms   REAL NOT NULL,
    trace         TEXT,
    created_at    TEXT NOT NULL
);
CREATE INDEX invocations_by_agent ON invocations (agent_id, created_at, invocation_id);
CREATE INDEX invocations_by_session ON invocations (session_id);

CREATE TABLE sessions (
    session_id     TEXT PRIMARY KEY,
    agent_id       TEXT NOT NULL,
    display_name   TEXT,
    metadata       TEXT NOT NULL,
    message_count  INTEGER NOT NULL DEFAULT 0,
    created_at     TEXT NOT NULL,
    last_active_at TEXT NOT NULL
);
CREATE INDEX sessions_by_activity ON sessions (agent_id, last_active_at, session_id);

CREATE TABLE messages (
    message_id    TEXT PRIMARY KEY,
    session_id    TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    role          TEXT NOT NULL,
    content       TEXT NOT NULL,
    invocation_id TEXT,
    created_at    TEXT NOT NULL
);
CREATE UNIQUE INDEX messages_by_session ON messages (session_id, seq);

CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value REAL NOT NULL
);

CREATE TABLE daily_stats (
    date  TEXT NOT NULL,
    name  TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (date, name)
);

CREATE TABLE daily_failed_stages (
    date  TEXT NOT NULL,
    stage TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (date, stage)
);
