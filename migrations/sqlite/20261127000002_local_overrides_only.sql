-- One process keeps its last good overrides under `local`. Rows under other
-- names (earlier builds keyed them by host and port) would otherwise block
-- deletes of the nodes they name for good.
DELETE FROM replica_overrides WHERE replica_id <> 'local';
