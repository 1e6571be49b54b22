-- One row per window x queue x channel, as published on kpi.windows. Snapshots
-- of an open window are re-published with a growing version; the final one has
-- the highest. Read the latest with FINAL (or argMax(..., version)).
CREATE TABLE IF NOT EXISTS kpi_windows
(
    window                      LowCardinality(String),
    window_start                DateTime64(3, 'UTC'),
    window_end                  DateTime64(3, 'UTC'),
    queue                       String,
    channel                     LowCardinality(String),
    offered                     Int64,
    answered                    Int64,
    abandoned                   Int64,
    short_abandoned             Int64,
    answered_within_target      Int64,
    abandoned_within_target     Int64,
    answered_immediately        Int64,
    transferred_out             Int64,
    transfers                   Int64,
    handled                     Int64,
    wait_answered_sum_seconds   Float64,
    wait_answered_max_seconds   Nullable(Float64),
    wait_abandoned_sum_seconds  Float64,
    wait_abandoned_max_seconds  Nullable(Float64),
    handle_time_sum_seconds     Float64,
    asa_seconds                 Nullable(Float64),
    aht_seconds                 Nullable(Float64),
    abandonment_rate            Nullable(Float64),
    service_level               Nullable(Float64),
    service_level_formula       LowCardinality(String),
    service_level_seconds       Float64,
    immediate_response_rate     Nullable(Float64),
    transfer_rate               Nullable(Float64),
    wait_buckets                Array(Int64),
    version                     UInt64,
    final                       Bool,
    published_at                DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (window, window_start, queue, channel)
