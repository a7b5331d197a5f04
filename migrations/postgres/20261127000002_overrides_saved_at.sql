-- When a replica last saved its overrides, on the database's clock: its
-- references protect nodes from deletes from that moment on, even before the
-- replica first reports itself in `replicas`.
ALTER TABLE replica_overrides ADD COLUMN saved_at TIMESTAMPTZ NOT NULL DEFAULT now();
