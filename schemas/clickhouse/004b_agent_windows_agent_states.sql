-- Added in issue 16 (see 003b_kpi_windows_agent_states.sql): the agent's time in state per
-- window, on its row with channel '' (the per-channel rows carry 0, empty and NULL).
ALTER TABLE agent_windows
    ADD COLUMN IF NOT EXISTS staffed_seconds Float64 DEFAULT 0 AFTER avg_hold_seconds,
    ADD COLUMN IF NOT EXISTS available_seconds Float64 DEFAULT 0 AFTER staffed_seconds,
    ADD COLUMN IF NOT EXISTS on_contact_seconds Float64 DEFAULT 0 AFTER available_seconds,
    ADD COLUMN IF NOT EXISTS after_contact_work_seconds Float64 DEFAULT 0 AFTER on_contact_seconds,
    ADD COLUMN IF NOT EXISTS away_seconds Float64 DEFAULT 0 AFTER after_contact_work_seconds,
    ADD COLUMN IF NOT EXISTS away_seconds_by_reason Map(String, Float64) AFTER away_seconds,
    ADD COLUMN IF NOT EXISTS occupancy Nullable(Float64) AFTER away_seconds_by_reason,
    ADD COLUMN IF NOT EXISTS utilization Nullable(Float64) AFTER occupancy
