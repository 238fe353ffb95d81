-- Not a numbered migration: run once, before migration 1, when `outbox migrate` adopts an
-- outbox table created by other code (the reference SQLAlchemy model) that has no seq column.
-- Migration 1 would add seq as an identity column, numbering the existing rows in the order
-- they lie on disk; an UPDATE moves a row to the end, so an event whose row was retried by the
-- old publisher would be delivered after later events of its aggregate. Here the rows are
-- numbered in created_at order instead (ties: the order on disk), and new rows continue after
-- them; migration 1 then finds seq in place.
DO $$
DECLARE
    by_time boolean := EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = 'outbox'::regclass AND attname = 'created_at' AND NOT attisdropped);
BEGIN
    ALTER TABLE outbox ADD COLUMN seq bigint;
    EXECUTE format(
        'UPDATE outbox o SET seq = n.seq
         FROM (SELECT ctid AS row, row_number() OVER (ORDER BY %s ctid) AS seq FROM outbox) n
         WHERE o.ctid = n.row',
        CASE WHEN by_time THEN 'created_at NULLS LAST,' ELSE '' END);
    ALTER TABLE outbox ALTER COLUMN seq SET NOT NULL;
    ALTER TABLE outbox ALTER COLUMN seq ADD GENERATED ALWAYS AS IDENTITY;
    PERFORM setval(pg_get_serial_sequence('outbox', 'seq'), coalesce(max(seq), 0) + 1, false)
    FROM outbox;
END
$$;
