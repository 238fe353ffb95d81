-- The claim no longer probes pending rows per aggregate through an index: when it must check
-- (another relay holds rows), it counts them in one scan of outbox_pending_idx. One index fewer
-- to maintain on every insert into the outbox.
DROP INDEX IF EXISTS outbox_pending_aggregate_idx;
