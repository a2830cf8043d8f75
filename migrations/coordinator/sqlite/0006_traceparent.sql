-- The W3C trace context the transaction began in (a `traceparent` value), when the
-- coordinator traces: every phase-two call continues it, whoever makes the call and
-- however late, so one trace shows the transaction from Begin to its last Confirm.
ALTER TABLE global_tx ADD COLUMN traceparent TEXT;
