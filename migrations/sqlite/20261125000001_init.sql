-- Nodes, strategies, the active-strategy setting and the audit trail.
CREATE TABLE nodes (
    id           TEXT PRIMARY KEY NOT NULL,
    region       TEXT,
    weight       INTEGER NOT NULL DEFAULT 100 CHECK (weight BETWEEN 0 AND 65535),
    state        TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'draining', 'disabled')),
    ext_tcp_addr TEXT NOT NULL DEFAULT '',
    ext_ws_addr  TEXT NOT NULL DEFAULT '',
    ext_wss_addr TEXT NOT NULL DEFAULT '',
    int_tcp_addr TEXT NOT NULL DEFAULT '',
    int_ws_addr  TEXT NOT NULL DEFAULT '',
    int_wss_addr TEXT NOT NULL DEFAULT '',
    labels       TEXT NOT NULL DEFAULT '{}',
    version      INTEGER NOT NULL DEFAULT 1,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
) STRICT;

CREATE TABLE strategies (
    name       TEXT PRIMARY KEY NOT NULL,
    kind       TEXT NOT NULL,
    params     TEXT NOT NULL DEFAULT '{}',
    version    INTEGER NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;

CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    before     TEXT,
    after      TEXT,
    request_id TEXT NOT NULL DEFAULT ''
) STRICT;

INSERT INTO strategies (name, kind, params, version, created_at, updated_at)
VALUES ('default', 'hash', '{}', 1,
        strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));

INSERT INTO settings (key, value) VALUES ('active_strategy', 'default');
