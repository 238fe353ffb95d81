-- NOTIFY makes committing transactions take a database-wide lock in turn: with many writers it
-- costs them group commit. Wake relays only when one is waiting; a busy relay claims again
-- right after its batch and finds the new rows anyway. A relay registers here when it goes idle
-- (and refreshes the row while idle); rows a crashed relay left behind stop counting after a
-- minute.
CREATE TABLE IF NOT EXISTS outbox_relay_waiting (
    relay text        PRIMARY KEY,
    seen  timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM outbox_relay_waiting WHERE seen > now() - interval '1 minute') THEN
        PERFORM pg_notify('outbox', '');
    END IF;
    RETURN NULL;
END
$$;
