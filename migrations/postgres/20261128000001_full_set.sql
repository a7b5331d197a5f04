-- The full set of the `bounded` kind: decided by the replica that judges
-- health, read by every replica with the rest of a node's health.
ALTER TABLE node_health ADD COLUMN is_full BOOLEAN NOT NULL DEFAULT false;
