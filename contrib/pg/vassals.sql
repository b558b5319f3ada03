-- contrib/pg/vassals.sql: the table an emperor runs vassals from when its vassal source is PostgreSQL.
--
-- Load it into the database the emperors will read (PostgreSQL 11 or later):
--
--     psql -v ON_ERROR_STOP=1 -d 'host=db.example dbname=fleet user=admin' -f contrib/pg/vassals.sql
--
-- Loading it again is safe: it creates what is missing and replaces the functions and triggers with this
-- version's; it never drops the table or a row. (An existing table's columns and constraints are left as they
-- are: a later version that changes them will say how to migrate.) Everything happens in one transaction.
--
-- Each emperor then reads the table through a pg:// vassal source, uWSGI's "pg" imperial monitor contract:
--
--     emperor --emperor 'pg://host=db.example dbname=fleet user=emperor_h2;<query>'
--
-- where <query> returns one row per vassal with the columns, in this order:
--     name    the vassal's name, as a file name would be ("app.ini")
--     config  the whole vassal file, INI text
--     epoch   EXTRACT(epoch FROM ts): the vassal is reloaded when this grows
--     uid     (optional) the uid to run it as, in tyrant mode
--     gid     (optional) the gid likewise
--     handoff (optional) true when this emperor is handing the vassal over to another host (see below)
--
-- One emperor per host. An emperor on host 'h2' runs the vassals placed on it, and those moving away from it:
--
--     SELECT name, config, EXTRACT(epoch FROM ts), uid, gid, host IS DISTINCT FROM 'h2'
--       FROM vassals
--      WHERE host = 'h2' OR prev_host = 'h2'
--
-- The 6th column, "handoff", is true on the host a vassal is moving away from (its prev_host). That emperor keeps
-- serving the vassal until the new host has published the vassal's route, then withdraws its own route and stops
-- its instance, so that a move loses no request. On the new host the same row has handoff false: it starts the
-- vassal as usual. An emperor that is not told about placement can use uWSGI's own query instead, which runs
-- every row:
--
--     SELECT name, config, EXTRACT(epoch FROM ts) FROM vassals
--
-- Emperors notice changes at once: every change to the table sends a notification on the channel
-- emperor_vassals (see the triggers below), which they LISTEN to; they also re-run their query now and then, in
-- case a notification was missed while they were disconnected. An emperor's role needs only SELECT:
--
--     CREATE ROLE emperor_h2 LOGIN;
--     GRANT SELECT ON vassals TO emperor_h2;
--
-- Day-to-day use:
--
--     INSERT INTO vassals (name, config, host)
--          VALUES ('app.ini', E'[emperor]\nexec = ...\n', 'h1');          -- h1 starts it
--     UPDATE vassals SET config = '...' WHERE name = 'app.ini';          -- h1 reloads it (ts is bumped for you)
--     UPDATE vassals SET ts = clock_timestamp() WHERE name = 'app.ini';  -- reloads it unchanged ("touch")
--     UPDATE vassals SET host = 'h2' WHERE name = 'app.ini';             -- moves it: h2 starts it, h1 stops it
--     DELETE FROM vassals WHERE name = 'app.ini';                        -- whoever runs it stops it
--
-- (E'...' strings take \n for a newline; a dollar-quoted $cfg$...$cfg$ string takes the text as it is.)

BEGIN;

CREATE TABLE IF NOT EXISTS vassals (
    -- The vassal's name with its extension, as a file name would be: emperors use it in file and socket names, in
    -- logs and in routes, and uWSGI picks the config's syntax by the extension. One path component: no "/", no
    -- leading dot, 255 bytes at most.
    name      text PRIMARY KEY
              CONSTRAINT vassals_name_is_a_file_name
              CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]*\.ini$' AND octet_length(name) <= 255),

    -- The whole vassal file, INI text, exactly what would be in <vassals dir>/<name>.
    config    text NOT NULL,

    -- uWSGI's contract: an emperor reloads a vassal when its ts is newer than the one it started it with, like a
    -- touched file. The trigger below bumps it when config, uid or gid change, so a plain UPDATE of the config is
    -- enough (set it yourself to reload without a change). Beware that uWSGI's own pg monitor compares whole
    -- seconds: under uWSGI, a change in the same second as the previous one is not seen until a later one.
    ts        timestamptz NOT NULL DEFAULT clock_timestamp(),

    -- uWSGI's optional 4th and 5th columns: the user and group a vassal runs as when the emperor is a tyrant
    -- (--emperor-tyrant). NULL when not used. A change reloads the vassal.
    uid       integer,
    gid       integer,

    -- Placement: the host whose emperor runs the vassal (each emperor's query selects its own rows). NULL: no
    -- emperor's query selects it as its own; the previous host's sees it as a hand-over (handoff true).
    host      text,

    -- Set by the trigger when host changes: the host handing the vassal over, whose emperor keeps it until the new
    -- host serves it. It stays set afterwards (the old host stops the vassal and leaves it stopped); set it to NULL
    -- when the move is done, if you like. One move at a time: moving a vassal again before the previous move is
    -- over (h1 -> h2 -> h3) takes it away from h1 without a hand-over.
    prev_host text
);

-- Each emperor's query selects by host or prev_host.
CREATE INDEX IF NOT EXISTS vassals_host ON vassals (host);
CREATE INDEX IF NOT EXISTS vassals_prev_host ON vassals (prev_host);

-- Before a row is written: records a hand-over, and bumps ts when what the vassal runs changed.
CREATE OR REPLACE FUNCTION vassals_before_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        -- A move: the old host hands the vassal over (see prev_host above).
        IF NEW.host IS DISTINCT FROM OLD.host THEN
            NEW.prev_host := OLD.host;
        END IF;
        -- What the vassal runs changed but the UPDATE left ts as it was: bump it, or no emperor would reload.
        -- To the current time (not now(), the transaction's start), and forward even should the clock have
        -- stepped back or the old ts lie in the future.
        IF (NEW.config, NEW.uid, NEW.gid) IS DISTINCT FROM (OLD.config, OLD.uid, OLD.gid)
           AND NEW.ts IS NOT DISTINCT FROM OLD.ts THEN
            NEW.ts := greatest(clock_timestamp(), OLD.ts + interval '1 microsecond');
        END IF;
    END IF;
    RETURN NEW;
END
$$;

-- After a row changed: tells the emperors which vassal, by name, on the channel emperor_vassals. A rename tells
-- both names. PostgreSQL delivers notifications when the transaction commits, and only once per name and
-- transaction however many times the row changed.
CREATE OR REPLACE FUNCTION vassals_notify_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('emperor_vassals', OLD.name);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('emperor_vassals', NEW.name);
    END IF;
    RETURN NULL;
END
$$;

-- After a TRUNCATE (which fires no row triggers): an empty name, meaning "everything may have changed".
CREATE OR REPLACE FUNCTION vassals_notify_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('emperor_vassals', '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS vassals_before_write ON vassals;
CREATE TRIGGER vassals_before_write
    BEFORE INSERT OR UPDATE ON vassals
    FOR EACH ROW EXECUTE FUNCTION vassals_before_write();

DROP TRIGGER IF EXISTS vassals_notify_row ON vassals;
CREATE TRIGGER vassals_notify_row
    AFTER INSERT OR UPDATE OR DELETE ON vassals
    FOR EACH ROW EXECUTE FUNCTION vassals_notify_row();

DROP TRIGGER IF EXISTS vassals_notify_truncate ON vassals;
CREATE TRIGGER vassals_notify_truncate
    AFTER TRUNCATE ON vassals
    FOR EACH STATEMENT EXECUTE FUNCTION vassals_notify_truncate();

COMMIT;
