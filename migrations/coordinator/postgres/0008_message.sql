-- Transactional messages (mode MESSAGE): where the coordinator asks whether a PREPARED
-- message's local transaction committed (settle.v1.Participant/QueryPrepared). NULL for
-- other modes and for messages submitted without Prepare.
ALTER TABLE global_tx ADD COLUMN query_endpoint TEXT;
