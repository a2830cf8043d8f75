-- Saga steps: consecutive steps with the same non-zero group run in parallel; 0 runs alone.
-- TCC branches keep the default.
ALTER TABLE branch ADD COLUMN step_group INTEGER NOT NULL DEFAULT 0;
