-- One row per interaction and queue segment (a transfer to another queue starts
-- a new segment): the drill-down and the independent recomputation source.
-- The newest version of a row wins: read with FINAL.
CREATE TABLE IF NOT EXISTS interactions
(
    interaction_id  String,
    segment         UInt16,
    channel         LowCardinality(String),
    queue           String,
    offered_at      DateTime64(3, 'UTC'),
    outcome         LowCardinality(String),   -- waiting | answered | abandoned | transferred (| flowed_out | callback_requested: 002a)
    left_queue_at   Nullable(DateTime64(3, 'UTC')),
    wait_ms         Nullable(Int64),
    agent_id        Nullable(String),
    transfers       UInt16,
    transfer_times  Array(DateTime64(3, 'UTC')),
    ended_at        Nullable(DateTime64(3, 'UTC')),
    wrapup_ms       Int64,
    handle_ms       Nullable(Int64),
    version         UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (interaction_id, segment)
