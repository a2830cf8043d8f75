-- Who began and who decided each transaction, and who last registered each participant:
-- the authenticated caller's name (a certificate's or a token's), NULL when callers are
-- not authenticated. A decision the coordinator takes itself is recorded as '(deadline)',
-- an operator's as 'admin:ACTOR'; neither can be a caller's name.
ALTER TABLE global_tx ADD COLUMN began_by TEXT;
ALTER TABLE global_tx ADD COLUMN decided_by TEXT;
ALTER TABLE participant ADD COLUMN registered_by TEXT;
