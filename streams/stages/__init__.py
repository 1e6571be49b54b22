"""The stages of the streaming layer as plain classes: their state and logic behind
``on_batch`` / ``on_tick`` / ``checkpoint``, free of Faust and Kafka so they can be
tested alone (docs/streaming-layer.md). A short Faust agent wraps each one."""
