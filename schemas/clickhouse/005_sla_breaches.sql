-- One row per SLA breach, as published on sla.breaches (key breach_id =
-- queue|channel|kpi|opened_at). A breach is written when it opens (version 1)
-- and again when it resolves (version 2): read with FINAL and the resolved row
-- wins; resolved_at IS NULL means the breach is still open.
CREATE TABLE IF NOT EXISTS sla_breaches
(
    breach_id         String,
    kpi               LowCardinality(String),
    target_op         LowCardinality(String),
    target_value      Float64,
    severity          LowCardinality(String),
    observed          Float64,
    worst_observed    Float64,
    queue             String,
    channel           LowCardinality(String),
    state             LowCardinality(String),
    violating_since   DateTime64(3, 'UTC'),
    opened_at         DateTime64(3, 'UTC'),
    resolved_at       Nullable(DateTime64(3, 'UTC')),
    duration_seconds  Nullable(Float64),
    as_of             DateTime64(3, 'UTC'),
    version           UInt64,
    published_at      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(opened_at)
ORDER BY breach_id
