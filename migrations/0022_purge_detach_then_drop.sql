-- The retention purge holds the inbox's lock only while it detaches a month: the month's queued
-- messages are forgotten and its table dropped afterwards, in a transaction of its own that locks
-- nothing the engine reads or writes.
--
-- Before: one transaction detached each month, forgot its queued messages (a sequential scan of the
-- whole queue) and dropped it, holding `messages` ACCESS EXCLUSIVE, and `accounts` through the
-- month's foreign key, the whole time: an intake INSERT waited 605 ms during the purge of a month of
-- 3,000,000 rows with 600,000 queued (20 ms now; docs/benchmarks.md, "Retention purge").
-- PostgreSQL removes a dropped table's files after the transaction has released its locks, so the
-- files themselves (the bulk of the purge's time) never held the inbox up.

DROP FUNCTION messages_drop_partitions(timestamptz);
DROP FUNCTION messages_drop_month_partitions(timestamptz);

-- Detach every month partition that ended at or before `before` (the retention purge); rows of the
-- month that straddles `before` are deleted row by row by the caller. Returns the names detached,
-- which messages_drop_detached then drops.
CREATE FUNCTION messages_detach_partitions(before timestamptz)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    part record;
    fk record;
BEGIN
    PERFORM messages_partitions_lock();
    FOR part IN
        SELECT c.relname, (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                        'TO \(''([^'']+)''\)'))[1]::timestamptz AS upper
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'messages'::regclass AND c.relname <> 'messages_default'
        ORDER BY 2
    LOOP
        EXIT WHEN part.upper > before;
        EXECUTE format('ALTER TABLE messages DETACH PARTITION %I', part.relname);
        -- Its foreign keys go now, while the tables they reference are locked for a moment anyway:
        -- dropping the table with them would lock `accounts` for as long as its files take.
        FOR fk IN SELECT conname FROM pg_constraint WHERE conrelid = part.relname::regclass AND contype = 'f' LOOP
            EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', part.relname, fk.conname);
        END LOOP;
        DELETE FROM message_id_ranges WHERE partition = part.relname;
        RETURN NEXT part.relname;
    END LOOP;
END
$$;

-- The month tables (messages_YYYY_MM) that are detached from the inbox and not dropped yet: those
-- a purge just detached, and any a purge left when it stopped between the two steps.
CREATE FUNCTION messages_detached_months()
RETURNS SETOF text LANGUAGE sql STABLE AS $$
    SELECT c.relname::text FROM pg_class c
    WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r' AND NOT c.relispartition
      AND c.relname ~ '^messages_[0-9]{4}_[0-9]{2}$'
    ORDER BY 1
$$;

-- Drop one detached month: the queue forgets its messages (only those: a pass may hold the rows of
-- other messages), then its table goes. Does nothing for a month that is attached or gone.
CREATE FUNCTION messages_drop_detached(name text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    month timestamptz := to_date(right(name, 7), 'YYYY_MM')::timestamp AT TIME ZONE 'UTC';
BEGIN
    PERFORM messages_partitions_lock();
    IF name NOT IN (SELECT messages_detached_months()) THEN
        RETURN false;
    END IF;
    DELETE FROM pending_messages WHERE created_at >= month AND created_at < month + interval '1 month';
    EXECUTE format('DROP TABLE %I', name);
    RETURN true;
END
$$;
