-- Nodes, strategies, the change feed, the audit trail, shared health and the
-- replica registry.
CREATE TABLE nodes (
    id           TEXT PRIMARY KEY,
    region       TEXT,
    weight       BIGINT NOT NULL DEFAULT 100 CHECK (weight BETWEEN 0 AND 65535),
    state        TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'draining', 'disabled')),
    ext_tcp_addr TEXT NOT NULL DEFAULT '',
    ext_ws_addr  TEXT NOT NULL DEFAULT '',
    ext_wss_addr TEXT NOT NULL DEFAULT '',
    int_tcp_addr TEXT NOT NULL DEFAULT '',
    int_ws_addr  TEXT NOT NULL DEFAULT '',
    int_wss_addr TEXT NOT NULL DEFAULT '',
    labels       TEXT NOT NULL DEFAULT '{}',
    version      BIGINT NOT NULL DEFAULT 1,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    seq          BIGINT NOT NULL DEFAULT 0,
    created_seq  BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE strategies (
    name       TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    params     TEXT NOT NULL DEFAULT '{}',
    version    BIGINT NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    seq        BIGINT NOT NULL DEFAULT 0
);

-- One row; every write bumps change_seq first, which also serialises writers,
-- so change numbers are handed out in commit order.
CREATE TABLE cluster_state (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    change_seq      BIGINT NOT NULL,
    active_strategy TEXT NOT NULL,
    active_seq      BIGINT NOT NULL
);

INSERT INTO cluster_state (id, change_seq, active_strategy, active_seq) VALUES (1, 0, 'default', 0);

INSERT INTO strategies (name, kind, params, version, created_at, updated_at, seq)
VALUES ('default', 'hash', '{}', 1,
        to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), 0);

-- The last version of deleted nodes and strategies, so one created later
-- under the same name continues from it (If-Match never matches across).
CREATE TABLE retired (
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    version    BIGINT NOT NULL,
    retired_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (kind, key)
);

CREATE TABLE changes (
    seq  BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    key  TEXT NOT NULL
);

CREATE TABLE audit_log (
    id         BIGSERIAL PRIMARY KEY,
    at         TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    before     TEXT,
    after      TEXT,
    request_id TEXT NOT NULL DEFAULT ''
);

-- Health facts; every replica derives the same status from them. `xid` is
-- the writing transaction's id, so readers can ask for what changed since a
-- snapshot without missing transactions that commit out of order; `version`
-- orders the writes of one row. No index on xid: heartbeats stay HOT updates
-- (the table is small; readers scan it).
CREATE TABLE node_health (
    node_id         TEXT PRIMARY KEY,
    incarnation     BIGINT NOT NULL,
    version         BIGINT NOT NULL DEFAULT 0,
    connections     BIGINT,
    heartbeat_at    TIMESTAMPTZ,
    heartbeat_since TIMESTAMPTZ,
    expired_at      TIMESTAMPTZ,
    probe_down      BOOLEAN,
    probe_since     TIMESTAMPTZ,
    probe_reason    TEXT NOT NULL DEFAULT '',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    xid             BIGINT NOT NULL
) WITH (fillfactor = 70);

-- The replica that judges expiry and runs probes holds an advisory lock and
-- renews this lease; a holder whose lease ran out is ended by the next one.
CREATE TABLE leader_lease (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    pid        INTEGER NOT NULL,
    renewed_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE replicas (
    id         TEXT PRIMARY KEY,
    addr       TEXT NOT NULL,
    version    TEXT NOT NULL,
    revision   TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    last_seen  TIMESTAMPTZ NOT NULL
);

CREATE TABLE replica_overrides (
    replica_id TEXT PRIMARY KEY,
    content    TEXT NOT NULL,
    revision   TEXT NOT NULL,
    refs       JSONB NOT NULL,
    loaded_at  TEXT NOT NULL,
    active_strategy TEXT
);
