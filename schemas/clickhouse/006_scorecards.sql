-- The weighted scorecard per window (15 minutes and longer) x queue x channel, as
-- published on kpi.scorecards. Re-published with a higher version when the
-- window's delayed FCR part is decided: read with FINAL.
-- Maps are keyed by KPI: observed['csat'], attainment['aht_seconds'], ...; a KPI
-- missing from observed had no value in the window and its weight was
-- redistributed (effective_weights).
CREATE TABLE IF NOT EXISTS scorecards
(
    window             LowCardinality(String),
    window_start       DateTime64(3, 'UTC'),
    window_end         DateTime64(3, 'UTC'),
    queue              String,
    channel            LowCardinality(String),
    score              Nullable(Float64),
    weights            Map(String, Float64),
    effective_weights  Map(String, Float64),
    targets            Map(String, Float64),
    observed           Map(String, Float64),
    attainment         Map(String, Float64),
    final              Bool,
    fcr_final          Nullable(Bool),
    version            UInt64,
    published_at       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (window, window_start, queue, channel)
