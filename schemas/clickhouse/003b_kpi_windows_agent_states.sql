-- Added in issue 16 (see 002a_interactions_exit_and_hold.sql for the pattern): agent time in
-- state per queue x channel x window, split exactly at window boundaries
-- (docs/agents.md). A queue's staffed, available and away time is on the row of each of
-- its channels: not additive across channels. occupancy = (on_contact +
-- after_contact_work) / (those + available), utilization = (on_contact +
-- after_contact_work) / staffed, NULL on a zero denominator; roll them up from the summed
-- seconds (007_rollups.sql), never by averaging. DEFAULT 0 / empty map / NULL: rows
-- written before these columns existed, or from records published before them.
ALTER TABLE kpi_windows
    ADD COLUMN IF NOT EXISTS staffed_seconds Float64 DEFAULT 0 AFTER avg_hold_seconds,
    ADD COLUMN IF NOT EXISTS available_seconds Float64 DEFAULT 0 AFTER staffed_seconds,
    ADD COLUMN IF NOT EXISTS on_contact_seconds Float64 DEFAULT 0 AFTER available_seconds,
    ADD COLUMN IF NOT EXISTS after_contact_work_seconds Float64 DEFAULT 0 AFTER on_contact_seconds,
    ADD COLUMN IF NOT EXISTS away_seconds Float64 DEFAULT 0 AFTER after_contact_work_seconds,
    ADD COLUMN IF NOT EXISTS away_seconds_by_reason Map(String, Float64) AFTER away_seconds,
    ADD COLUMN IF NOT EXISTS occupancy Nullable(Float64) AFTER away_seconds_by_reason,
    ADD COLUMN IF NOT EXISTS utilization Nullable(Float64) AFTER occupancy
