-- Added in issue 16 (see 002a_interactions_exit_and_hold.sql for the pattern): flow-outs
-- and callback requests (queue exits in the window of the exit: the reconciliation
-- identity is waiting_at_start + offered = answered + abandoned + short_abandoned +
-- transferred_out + flowed_out + callbacks_requested + waiting_at_end) and hold (each
-- hold in the window in which it ended; held = segments put on hold at least once).
-- DEFAULT 0: a kpi.windows record carries these only when its window has a flow-out,
-- a callback request or a hold (schemas/records.py), so the others store 0 here.
ALTER TABLE kpi_windows
    ADD COLUMN IF NOT EXISTS flowed_out Int64 DEFAULT 0 AFTER transferred_out,
    ADD COLUMN IF NOT EXISTS callbacks_requested Int64 DEFAULT 0 AFTER flowed_out,
    ADD COLUMN IF NOT EXISTS held Int64 DEFAULT 0 AFTER handle_time_sum_seconds,
    ADD COLUMN IF NOT EXISTS hold_seconds Float64 DEFAULT 0 AFTER held,
    ADD COLUMN IF NOT EXISTS avg_hold_seconds Nullable(Float64) AFTER hold_seconds
