-- Per-agent rollups for windows of 15 minutes and longer, as published on kpi.agents.
-- Latest version wins: read with FINAL.
CREATE TABLE IF NOT EXISTS agent_windows
(
    window                   LowCardinality(String),
    window_start             DateTime64(3, 'UTC'),
    window_end               DateTime64(3, 'UTC'),
    agent_id                 String,
    channel                  LowCardinality(String),
    answered                 Int64,
    handled                  Int64,
    handle_time_sum_seconds  Float64,
    aht_seconds              Nullable(Float64),
    transfers                Int64,
    transfer_rate            Nullable(Float64),
    csat_responses           Int64,
    csat_satisfied           Int64,
    csat                     Nullable(Float64),
    nps_responses            Int64,
    nps_promoters            Int64,
    nps_detractors           Int64,
    nps                      Nullable(Float64),
    version                  UInt64,
    final                    Bool,
    published_at             DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (window, window_start, agent_id, channel)
