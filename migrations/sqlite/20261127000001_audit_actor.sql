-- Who made each change, in its own column: `admin` (a request with the admin
-- token) or `system` (startup, the overrides watcher, SIGHUP), whatever
-- request id the client sent.
ALTER TABLE audit_log ADD COLUMN actor TEXT NOT NULL DEFAULT 'admin';
UPDATE audit_log SET actor = 'system' WHERE request_id IN ('startup', 'watcher', 'sighup');
