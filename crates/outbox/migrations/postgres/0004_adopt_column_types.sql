-- Adopt the column types of a table created by other code, e.g. the reference SQLAlchemy
-- model (README, "Adopting an existing table"), whose aggregate_id is a uuid and whose
-- timestamps are `timestamp without time zone`. The relay's statements compare aggregate_id
-- with the dead-letter table's text column and its timestamps with now(): convert them.
--
-- * aggregate_id of any other type becomes text (its text form: a uuid keeps its usual
--   spelling). Writers that insert a uuid still can (PostgreSQL casts to text on assignment).
-- * `timestamp without time zone` columns become timestamptz, their values read as UTC (the
--   reference code writes datetime.utcnow()). A writer that later inserts a zone-less value
--   has it read in its session's TimeZone: keep writers on UTC (ALTER ROLE … SET timezone =
--   'UTC') or write zone-aware times.
-- * json or text payload / headers become jsonb (text that is not JSON stops the migration,
--   naming the column: fix or delete those rows, then migrate again).
-- * retry_count, created_at and id get the defaults plain-SQL writers rely on (their ORM set
--   them in the application), and retry_count / created_at lose their NULLs.
--
-- On a table this migration created, every check below is false: nothing changes. Converting
-- a type rewrites the table under an exclusive lock: on a large table, run it when writers
-- can wait.
DO $$
DECLARE
    t regclass := to_regclass('outbox');
    changes text[] := '{}';
    c record;
BEGIN
    FOR c IN
        SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type,
               a.attnotnull AS not_null, a.atthasdef AS has_default
        FROM pg_attribute a
        WHERE a.attrelid = t AND a.attnum > 0 AND NOT a.attisdropped
    LOOP
        IF c.name = 'aggregate_id' AND c.type <> 'text' THEN
            changes := array_append(changes,
                'ALTER COLUMN aggregate_id TYPE text USING aggregate_id::text');
        ELSIF c.name IN ('created_at', 'published_at', 'next_attempt_at')
              AND c.type = 'timestamp without time zone' THEN
            changes := array_append(changes, format(
                'ALTER COLUMN %1$I TYPE timestamptz USING %1$I AT TIME ZONE ''UTC''', c.name));
        ELSIF c.name IN ('payload', 'headers') AND c.type <> 'jsonb' THEN
            changes := array_append(changes,
                format('ALTER COLUMN %1$I TYPE jsonb USING %1$I::jsonb', c.name));
        END IF;
        IF c.name = 'retry_count' AND NOT c.not_null THEN
            UPDATE outbox SET retry_count = 0 WHERE retry_count IS NULL;
            ALTER TABLE outbox ALTER COLUMN retry_count SET NOT NULL;
        END IF;
        IF c.name = 'retry_count' AND NOT c.has_default THEN
            ALTER TABLE outbox ALTER COLUMN retry_count SET DEFAULT 0;
        END IF;
        IF c.name = 'created_at' AND NOT c.not_null THEN
            UPDATE outbox SET created_at = now() WHERE created_at IS NULL;
            ALTER TABLE outbox ALTER COLUMN created_at SET NOT NULL;
        END IF;
        IF c.name = 'created_at' AND NOT c.has_default THEN
            ALTER TABLE outbox ALTER COLUMN created_at SET DEFAULT now();
        END IF;
        IF c.name = 'id' AND NOT c.has_default THEN
            ALTER TABLE outbox ALTER COLUMN id SET DEFAULT gen_random_uuid();
        END IF;
    END LOOP;
    IF cardinality(changes) > 0 THEN
        BEGIN
            -- One statement: the table is rewritten once.
            EXECUTE 'ALTER TABLE outbox ' || array_to_string(changes, ', ');
        EXCEPTION WHEN invalid_text_representation THEN
            RAISE EXCEPTION 'cannot adopt table outbox: a payload or headers value is not JSON (%): fix or delete those rows, then run outbox migrate again', SQLERRM;
        END;
    END IF;
END
$$;
-- A table created without created_at gets it (0001 adds the other columns the relay needs).
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now();
