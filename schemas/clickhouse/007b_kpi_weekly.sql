-- Trend rollup per week x queue x channel from the 1-day KPI windows: see 007_rollups.sql
-- (why a plain view, how ratios, service level and percentiles are recomputed).
-- period_start is the week's Monday (Date).
CREATE OR REPLACE VIEW kpi_weekly AS
SELECT * EXCEPT (period) FROM kpi_rollups WHERE period = 'week'
