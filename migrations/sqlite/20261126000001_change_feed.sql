-- The change feed: a counter bumped by every write, the entity each change
-- touched, per-row change numbers, node incarnations, and each replica's last
-- good overrides file.
ALTER TABLE nodes ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN created_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE strategies ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;

CREATE TABLE cluster_state (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    change_seq      INTEGER NOT NULL,
    active_strategy TEXT NOT NULL,
    active_seq      INTEGER NOT NULL
) STRICT;

INSERT INTO cluster_state (id, change_seq, active_strategy, active_seq)
SELECT 1, 0, COALESCE((SELECT value FROM settings WHERE key = 'active_strategy'), 'default'), 0;

DROP TABLE settings;

CREATE TABLE changes (
    seq  INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    key  TEXT NOT NULL
) STRICT;

CREATE TABLE replica_overrides (
    replica_id TEXT PRIMARY KEY NOT NULL,
    content    TEXT NOT NULL,
    revision   TEXT NOT NULL,
    refs       TEXT NOT NULL,
    loaded_at  TEXT NOT NULL
) STRICT;

-- The last version of deleted nodes and strategies, so one created later
-- under the same name continues from it (If-Match never matches across).
CREATE TABLE retired (
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    version    INTEGER NOT NULL,
    retired_at TEXT NOT NULL,
    PRIMARY KEY (kind, key)
) STRICT;
