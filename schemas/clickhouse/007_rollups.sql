-- Trend rollups for reports: one row per period x queue x channel, for periods of a
-- day, an ISO week (starting Monday) and a calendar month (`period` = 'day' | 'week'
-- | 'month'), built from the latest version of the 1-day KPI windows
-- (kpi_windows FINAL WHERE window = '1d'). kpi_daily, kpi_weekly and kpi_monthly
-- (007a-007c) are this view filtered to one period.
--
-- Why plain views and not materialized views: kpi_windows is a ReplacingMergeTree
-- that receives every snapshot of a window (each with a higher version) and, after
-- a crash, re-delivered batches. A materialized view runs on INSERT, so it would
-- add every snapshot and every re-delivered copy of a day into its totals; only a
-- read with FINAL sees each window once, at its newest version. The source is
-- small (one row per queue, channel and day), so reading it with FINAL at query
-- time is cheap, and the rollups are always consistent with the newest snapshots,
-- the still-open current day included.
--
-- Rules:
-- * counters and sums are summed; maxima are max(); every ratio is recomputed from
--   the summed counters, never averaged over days; a ratio with an empty
--   denominator is NULL, as in kpi_windows;
-- * service level: each day contributes the numerator and denominator of the
--   formula its record names (service_level_formula), then those are summed;
-- * agent time in state: the seconds and the away-by-reason map are summed, occupancy
--   and utilization recomputed from those sums (as ccpulse/core/kpis.py does);
--   `service_level_formula` is that formula, or 'mixed' if it changed within the period;
-- * percentiles of the answered wait come from the summed DDSketch
--   (sumMap(wait_sketch)) with the same rule as ccpulse/core/sketch.py: the lower
--   rank int(q * (n - 1)), reported as the representative (1 - a) * gamma^k of its
--   bucket (index 0 = exactly 0; index k + 1 = gamma^(k-1) < v <= gamma^k ms, with
--   a = 0.01 and gamma = 101/99), so within 1% of the exact value;
-- * `complete` is true when every day of the period is final, `fcr_final` when
--   every day's first-contact resolution is decided; `days` counts the day windows.
--
-- A day window is labelled (`period_start` of a 'day') by the UTC date of its
-- midpoint, which is its local business date whenever the day starts within 12 h
-- of UTC midnight (windows.day_start_hour minus the zone's UTC offset); e.g. a
-- Europe/Berlin day starting at 06:00 local (04:00/05:00 UTC) is labelled with its
-- own date.
--
-- CREATE OR REPLACE keeps the views in step with this file at every start. Replacing a
-- view that other views read needs ClickHouse with PR #69907 (24.9, and 24.8 LTS since
-- September 2024; docker-compose.yml's 24.8.14 has it); chDB has it.
CREATE OR REPLACE VIEW kpi_rollups AS
SELECT
    period, period_start, queue, channel, days, complete, service_level_formula,
    offered, answered, abandoned, short_abandoned, answered_within_target,
    abandoned_within_target, answered_immediately, transferred_out, flowed_out, callbacks_requested,
    transfers, handled,
    sl_numerator, sl_denominator,
    if(sl_denominator > 0, sl_numerator / sl_denominator, NULL) AS service_level,
    if(answered + abandoned > 0, abandoned / (answered + abandoned), NULL) AS abandonment_rate,
    if(answered + abandoned > 0, answered_immediately / (answered + abandoned), NULL) AS immediate_response_rate,
    wait_answered_sum_seconds, wait_answered_max_seconds,
    if(answered > 0, wait_answered_sum_seconds / answered, NULL) AS asa_seconds,
    if(length(sketch_cum) = 0, NULL,
       0.99 * pow(101 / 99, sketch_index[arrayFirstIndex(c -> c > toUInt64(0.5 * (sketch_cum[-1] - 1)), sketch_cum)] - 1)
       * (sketch_index[arrayFirstIndex(c -> c > toUInt64(0.5 * (sketch_cum[-1] - 1)), sketch_cum)] > 0) / 1000)
       AS wait_answered_p50_seconds,
    if(length(sketch_cum) = 0, NULL,
       0.99 * pow(101 / 99, sketch_index[arrayFirstIndex(c -> c > toUInt64(0.9 * (sketch_cum[-1] - 1)), sketch_cum)] - 1)
       * (sketch_index[arrayFirstIndex(c -> c > toUInt64(0.9 * (sketch_cum[-1] - 1)), sketch_cum)] > 0) / 1000)
       AS wait_answered_p90_seconds,
    if(length(sketch_cum) = 0, NULL,
       0.99 * pow(101 / 99, sketch_index[arrayFirstIndex(c -> c > toUInt64(0.95 * (sketch_cum[-1] - 1)), sketch_cum)] - 1)
       * (sketch_index[arrayFirstIndex(c -> c > toUInt64(0.95 * (sketch_cum[-1] - 1)), sketch_cum)] > 0) / 1000)
       AS wait_answered_p95_seconds,
    wait_sketch,
    wait_abandoned_sum_seconds, wait_abandoned_max_seconds,
    handle_time_sum_seconds,
    if(handled > 0, handle_time_sum_seconds / handled, NULL) AS aht_seconds,
    held, hold_seconds,
    if(held > 0, hold_seconds / held, NULL) AS avg_hold_seconds,
    staffed_seconds, available_seconds, on_contact_seconds, after_contact_work_seconds, away_seconds,
    away_seconds_by_reason,
    if(on_contact_seconds + after_contact_work_seconds + available_seconds > 0,
       (on_contact_seconds + after_contact_work_seconds)
       / (on_contact_seconds + after_contact_work_seconds + available_seconds), NULL) AS occupancy,
    if(staffed_seconds > 0, (on_contact_seconds + after_contact_work_seconds) / staffed_seconds, NULL)
       AS utilization,
    if(answered > 0, transfers / answered, NULL) AS transfer_rate,
    first_responses, first_response_sum_seconds,
    if(first_responses > 0, first_response_sum_seconds / first_responses, NULL) AS first_response_avg_seconds,
    agent_responses, agent_response_sum_seconds,
    if(agent_responses > 0, agent_response_sum_seconds / agent_responses, NULL) AS agent_response_avg_seconds,
    solved, reopened, one_touch, resolution_sum_seconds,
    if(solved > 0, reopened / solved, NULL) AS reopen_rate,
    if(solved > 0, one_touch / solved, NULL) AS one_touch_rate,
    if(solved > 0, resolution_sum_seconds / solved, NULL) AS resolution_avg_seconds,
    csat_responses, csat_satisfied,
    if(csat_responses > 0, csat_satisfied / csat_responses, NULL) AS csat,
    nps_responses, nps_promoters, nps_detractors,
    if(nps_responses > 0, 100 * (nps_promoters - nps_detractors) / nps_responses, NULL) AS nps,
    complaints,
    fcr_contacts, fcr_decided, fcr_resolved,
    if(fcr_decided > 0, fcr_resolved / fcr_decided, NULL) AS fcr_rate,
    fcr_final
FROM
(
    -- the summed sketch as bucket indices in ascending order and their running counts
    SELECT *,
        arrayMap(x -> x.1, buckets) AS sketch_index,
        arrayCumSum(arrayMap(x -> x.2, buckets)) AS sketch_cum
    FROM
    (
        SELECT *,
            arraySort(x -> x.1, arrayFilter(x -> x.2 > 0,
                arrayZip(arrayMap(k -> toUInt32(k), mapKeys(wait_sketch)), mapValues(wait_sketch)))) AS buckets
        FROM
        (
            SELECT
                p.1 AS period, p.2 AS period_start, queue, channel,
                count() AS days,
                min(day_final) AS complete,
                if(uniqExact(day_formula) = 1, any(day_formula), 'mixed') AS service_level_formula,
                sum(offered) AS offered,
                sum(answered) AS answered,
                sum(abandoned) AS abandoned,
                sum(short_abandoned) AS short_abandoned,
                sum(answered_within_target) AS answered_within_target,
                sum(abandoned_within_target) AS abandoned_within_target,
                sum(answered_immediately) AS answered_immediately,
                sum(transferred_out) AS transferred_out,
                sum(flowed_out) AS flowed_out,
                sum(callbacks_requested) AS callbacks_requested,
                sum(transfers) AS transfers,
                sum(handled) AS handled,
                sum(day_sl_numerator) AS sl_numerator,
                sum(day_sl_denominator) AS sl_denominator,
                sum(wait_answered_sum_seconds) AS wait_answered_sum_seconds,
                max(wait_answered_max_seconds) AS wait_answered_max_seconds,
                sumMap(wait_sketch) AS wait_sketch,
                sum(wait_abandoned_sum_seconds) AS wait_abandoned_sum_seconds,
                max(wait_abandoned_max_seconds) AS wait_abandoned_max_seconds,
                sum(handle_time_sum_seconds) AS handle_time_sum_seconds,
                sum(held) AS held,
                sum(hold_seconds) AS hold_seconds,
                sum(staffed_seconds) AS staffed_seconds,
                sum(available_seconds) AS available_seconds,
                sum(on_contact_seconds) AS on_contact_seconds,
                sum(after_contact_work_seconds) AS after_contact_work_seconds,
                sum(away_seconds) AS away_seconds,
                sumMap(away_seconds_by_reason) AS away_seconds_by_reason,
                sum(first_responses) AS first_responses,
                sum(first_response_sum_seconds) AS first_response_sum_seconds,
                sum(agent_responses) AS agent_responses,
                sum(agent_response_sum_seconds) AS agent_response_sum_seconds,
                sum(solved) AS solved,
                sum(reopened) AS reopened,
                sum(one_touch) AS one_touch,
                sum(resolution_sum_seconds) AS resolution_sum_seconds,
                sum(csat_responses) AS csat_responses,
                sum(csat_satisfied) AS csat_satisfied,
                sum(nps_responses) AS nps_responses,
                sum(nps_promoters) AS nps_promoters,
                sum(nps_detractors) AS nps_detractors,
                sum(complaints) AS complaints,
                sum(fcr_contacts) AS fcr_contacts,
                sum(fcr_decided) AS fcr_decided,
                sum(fcr_resolved) AS fcr_resolved,
                min(day_fcr_final) AS fcr_final
            FROM
            (
                SELECT *,
                    toDate(window_start + toIntervalSecond(intDiv(dateDiff('second', window_start, window_end), 2))) AS day,
                    final AS day_final,
                    fcr_final AS day_fcr_final,
                    service_level_formula AS day_formula,
                    multiIf(service_level_formula = 'abandons_within_target_positive',
                            answered_within_target + abandoned_within_target,
                            answered_within_target) AS day_sl_numerator,
                    multiIf(service_level_formula = 'abandons_within_target_neutral',
                            answered + abandoned - abandoned_within_target,
                            service_level_formula = 'answered_only', answered,
                            answered + abandoned) AS day_sl_denominator
                FROM kpi_windows FINAL
                WHERE window = '1d'
            )
            ARRAY JOIN [('day', day), ('week', toMonday(day)), ('month', toStartOfMonth(day))] AS p
            GROUP BY period, period_start, queue, channel
        )
    )
)
