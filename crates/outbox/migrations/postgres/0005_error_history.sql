-- The error history: the last failed attempts of an event (at most 10, oldest first), each
-- `{"at": timestamptz, "error": text, "counted": bool}` (`counted` is false for an outage:
-- the sink was unreachable, the attempt did not count toward max_attempts). The relay appends
-- to `outbox.error_history` when it retries an event and copies it, with the final failure,
-- into `outbox_dead_letter.error_history` when it gives up. `last_error` / `error` stay as
-- they were (the latest failure). Nullable: rows written before this migration, and by
-- writers that know nothing of it, have none.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS error_history jsonb;
ALTER TABLE outbox_dead_letter ADD COLUMN IF NOT EXISTS error_history jsonb;

-- Appends `entry` to `history` (NULL or not an array: a new one), keeping the latest 10.
CREATE OR REPLACE FUNCTION outbox_error_history_push(history jsonb, entry jsonb)
RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_agg(e ORDER BY i)
    FROM (SELECT e, i, count(*) OVER () AS n
          FROM jsonb_array_elements(
                   CASE WHEN jsonb_typeof(history) = 'array' THEN history ELSE '[]'::jsonb END
                   || jsonb_build_array(entry)) WITH ORDINALITY AS t(e, i)) s
    WHERE i > n - 10
$$;
