-- Added in issue 16 (see 002a_interactions_exit_and_hold.sql for the pattern): hold of
-- the agent's contacts, each hold in the window in which it ended. DEFAULT 0 as in 003a.
ALTER TABLE agent_windows
    ADD COLUMN IF NOT EXISTS held Int64 DEFAULT 0 AFTER nps,
    ADD COLUMN IF NOT EXISTS hold_seconds Float64 DEFAULT 0 AFTER held,
    ADD COLUMN IF NOT EXISTS avg_hold_seconds Nullable(Float64) AFTER hold_seconds
