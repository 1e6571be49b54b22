-- Added in issue 16 to a table that may already exist (CREATE TABLE IF NOT EXISTS leaves
-- an existing table as it is): each column is added if missing, at every start. Rows
-- written before read the column's default (NULL, 0). The writer inserts every column
-- but those whose DEFAULT the store computes (sinks/clickhouse.py: insert_columns).
--   outcome gains flowed_out | callback_requested; exit_reason: a flow-out's reason
--   (also on a flow-out to another queue, outcome transferred); holds: closed holds of
--   the answered segment; hold_ms: their total.
ALTER TABLE interactions
    ADD COLUMN IF NOT EXISTS exit_reason Nullable(String) AFTER outcome,
    ADD COLUMN IF NOT EXISTS holds UInt16 AFTER handle_ms,
    ADD COLUMN IF NOT EXISTS hold_ms Int64 AFTER holds
