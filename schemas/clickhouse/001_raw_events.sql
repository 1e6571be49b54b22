-- Every valid input event, with its original payload (unknown fields included).
-- Re-delivery after a crash writes the same event_id again: ReplacingMergeTree
-- collapses it. Read with FINAL (or GROUP BY event_id) for exact counts.
CREATE TABLE IF NOT EXISTS raw_events
(
    event_id        String,
    type            LowCardinality(String),
    channel         LowCardinality(String),
    occurred_at     DateTime64(3, 'UTC'),
    interaction_id  String,
    queue           Nullable(String),
    agent_id        Nullable(String),
    customer_id     Nullable(String),
    schema_version  UInt16,
    source_topic    LowCardinality(String),
    source_partition UInt32,
    source_offset   UInt64,
    payload         String,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (event_id)
