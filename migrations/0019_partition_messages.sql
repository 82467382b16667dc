-- The inbox's messages partitioned by month of created_at (issue 16: cost that stays flat as data
-- grows). The retention purge drops whole months instead of deleting rows; every hot query stays an
-- index probe per partition. See docs/scaling.md, "The inbox partitioned by time".
--
-- The new table is built from the existing one (LIKE), so columns other migrations added are kept
-- without naming them here; its indexes and foreign keys are recreated from the catalogue. Ids are
-- preserved and the id sequence is kept (the batch intake draws from `messages_id_seq` by name).
-- A primary key or unique index must include the partition key: the primary key is (id, created_at).
--
-- A lookup by id alone stays cheap through sealed partitions: once a month is over (a day's
-- margin), `messages_seal_partitions` records its smallest and largest id in `message_id_ranges`
-- and adds a CHECK on that id range, so no later row can fall outside it. Queries by id add
-- `messages_by_id(created_at, id)`, which PostgreSQL prunes at execution: only the sealed month(s)
-- whose id range holds the id, the unsealed months (current and ahead) and the DEFAULT partition
-- are probed.

CREATE TABLE message_id_ranges (
    partition  text PRIMARY KEY,
    lower      timestamptz NOT NULL,
    upper      timestamptz NOT NULL,
    min_id     bigint NOT NULL,
    max_id     bigint NOT NULL
);

-- Where rows of one id can be: its sealed months [span_lower, span_upper), and everything from the
-- horizon (the end of the sealed months) on. STABLE, so pruning evaluates them once per execution.
CREATE FUNCTION messages_span_lower(message_id bigint) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(min(lower), 'infinity') FROM message_id_ranges
    WHERE message_id BETWEEN min_id AND max_id
$$;

CREATE FUNCTION messages_span_upper(message_id bigint) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(max(upper), 'infinity') FROM message_id_ranges
    WHERE message_id BETWEEN min_id AND max_id
$$;

CREATE FUNCTION messages_span_horizon() RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(max(upper), '-infinity') FROM message_id_ranges
$$;

-- The condition queries by id add (a SQL function PostgreSQL inlines, so the pruning sees it).
CREATE FUNCTION messages_by_id(created_at timestamptz, message_id bigint) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT (created_at >= messages_span_lower(message_id) AND created_at < messages_span_upper(message_id))
           OR created_at >= messages_span_horizon()
$$;

-- The three functions below change the set of partitions: one at a time (several workers run
-- the cron jobs), under this transaction-level advisory lock. Their brief locks on `messages`
-- wait at most 3 s for a long reader (so the inbox never queues behind them for longer); a
-- timeout fails the job, which runs again the next night.
CREATE FUNCTION messages_partitions_lock() RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtext('notifier messages partitions'));
    SELECT set_config('lock_timeout', '3s', true);
$$;

-- Month partitions from the month of `first` to `months_ahead` months after the month of `now_`.
-- A month whose rows sit in the DEFAULT partition (strays) gets them moved into its new partition.
-- Returns the names of the partitions created.
CREATE FUNCTION messages_create_partitions(first timestamptz, now_ timestamptz, months_ahead integer)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    month timestamptz := date_trunc('month', first, 'UTC');
    last  timestamptz := date_trunc('month', now_, 'UTC') + make_interval(months => months_ahead);
    name  text;
BEGIN
    PERFORM messages_partitions_lock();
    WHILE month <= last LOOP
        name := 'messages_' || to_char(month AT TIME ZONE 'UTC', 'YYYY"_"MM');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format('CREATE TABLE %I (LIKE messages INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
            IF to_regclass('messages_default') IS NOT NULL THEN
                EXECUTE format(
                    'WITH moved AS (DELETE FROM messages_default WHERE created_at >= %L AND created_at < %L'
                    ' RETURNING *) INSERT INTO %I SELECT * FROM moved',
                    month, month + interval '1 month', name);
            END IF;
            EXECUTE format('ALTER TABLE messages ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           name, month, month + interval '1 month');
            RETURN NEXT name;
        END IF;
        month := month + interval '1 month';
    END LOOP;
END
$$;

-- Seal every month partition that ended before `before`: record its id range and enforce it.
-- Returns the names of the partitions sealed.
CREATE FUNCTION messages_seal_partitions(before timestamptz)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    part record;
    lo bigint;
    hi bigint;
BEGIN
    PERFORM messages_partitions_lock();
    FOR part IN
        SELECT c.relname, (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                        'FROM \(''([^'']+)''\) TO \(''([^'']+)''\)')) AS b
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'messages'::regclass AND c.relname <> 'messages_default'
          AND NOT EXISTS (SELECT 1 FROM message_id_ranges r WHERE r.partition = c.relname)
        ORDER BY 2
    LOOP
        CONTINUE WHEN part.b[2]::timestamptz > before;
        -- No row may arrive between reading the range and enforcing it.
        EXECUTE format('LOCK TABLE %I IN SHARE MODE', part.relname);
        EXECUTE format('SELECT coalesce(min(id), 0), coalesce(max(id), 0) FROM %I', part.relname) INTO lo, hi;
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (id BETWEEN %s AND %s) NOT VALID',
                       part.relname, part.relname || '_ids', lo, hi);
        INSERT INTO message_id_ranges (partition, lower, upper, min_id, max_id)
        VALUES (part.relname, part.b[1]::timestamptz, part.b[2]::timestamptz, lo, hi);
        RETURN NEXT part.relname;
    END LOOP;
END
$$;

-- Drop every month partition that ended at or before `before` (the retention purge); rows of the
-- month that straddles `before` are deleted row by row by the caller. Returns the names dropped.
CREATE FUNCTION messages_drop_partitions(before timestamptz)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    part record;
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
        EXECUTE format('DROP TABLE %I', part.relname);
        DELETE FROM message_id_ranges WHERE partition = part.relname;
        RETURN NEXT part.relname;
    END LOOP;
END
$$;

-- Move the table.
DO $$
DECLARE
    idx record;
    fk record;
    first timestamptz;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE contype = 'f' AND confrelid = 'messages'::regclass) THEN
        RAISE EXCEPTION 'a foreign key references messages: it must name (id, created_at) first';
    END IF;
    ALTER SEQUENCE messages_id_seq OWNED BY NONE;
    ALTER TABLE messages RENAME TO messages_unpartitioned;
    ALTER TABLE messages_unpartitioned RENAME CONSTRAINT messages_pkey TO messages_unpartitioned_pkey;

    CREATE TEMP TABLE messages_ddl (sql text, kind text) ON COMMIT DROP;
    INSERT INTO messages_ddl
    SELECT regexp_replace(pg_get_indexdef(i.indexrelid), ' ON (public\.)?messages_unpartitioned ',
                          ' ON messages '), 'index'
    FROM pg_index i WHERE i.indrelid = 'messages_unpartitioned'::regclass AND NOT i.indisprimary;
    INSERT INTO messages_ddl
    SELECT format('ALTER TABLE messages ADD CONSTRAINT %I %s', conname, pg_get_constraintdef(oid)), 'fk'
    FROM pg_constraint WHERE conrelid = 'messages_unpartitioned'::regclass AND contype = 'f';
    FOR idx IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               WHERE i.indrelid = 'messages_unpartitioned'::regclass AND NOT i.indisprimary LOOP
        EXECUTE format('DROP INDEX %I', idx.relname);
    END LOOP;

    CREATE TABLE messages (LIKE messages_unpartitioned
        INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMMENTS)
        PARTITION BY RANGE (created_at);
    CREATE TABLE messages_default PARTITION OF messages DEFAULT;
    SELECT coalesce(min(created_at), now()) INTO first FROM messages_unpartitioned;
    PERFORM messages_create_partitions(greatest(first, now() - interval '20 years'), now(), 3);
    PERFORM set_config('lock_timeout', '0', true);  -- the migration waits as long as it must
    INSERT INTO messages SELECT * FROM messages_unpartitioned;

    ALTER TABLE messages ADD PRIMARY KEY (id, created_at);
    FOR idx IN SELECT sql FROM messages_ddl WHERE kind = 'index' LOOP
        EXECUTE idx.sql;
    END LOOP;
    FOR fk IN SELECT sql FROM messages_ddl WHERE kind = 'fk' LOOP
        EXECUTE fk.sql;
    END LOOP;
    DROP TABLE messages_unpartitioned;
    ALTER SEQUENCE messages_id_seq OWNED BY messages.id;
    PERFORM messages_seal_partitions(now() - interval '1 day');
    PERFORM set_config('lock_timeout', '0', true);
END
$$;

ANALYZE messages;
