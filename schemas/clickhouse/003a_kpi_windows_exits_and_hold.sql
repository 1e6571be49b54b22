-- Added in issue 16 (see 002a_interactions_exit_and_hold.sql for the pattern): flow-outs
-- and callback requests (queue exits in the window of the exit: the reconciliation
-- identity is waiting_at_start + offered = answered + abandoned + short_abandoned +
-- transferred_out + flowed_out + callbacks_requested + waiting_at_end) and hold (each
-- hold in the window in which it ended; held = segments put on hold at least once).
ALTER TABLE kpi_windows
    ADD COLUMN IF NOT EXISTS flowed_out Int64 AFTER transferred_out,
    ADD COLUMN IF NOT EXISTS callbacks_requested Int64 AFTER flowed_out,
    ADD COLUMN IF NOT EXISTS held Int64 AFTER handle_time_sum_seconds,
    ADD COLUMN IF NOT EXISTS hold_seconds Float64 AFTER held,
    ADD COLUMN IF NOT EXISTS avg_hold_seconds Nullable(Float64) AFTER hold_seconds
