-- Digests without rewriting the inbox (issues 14 and 16): which messages wait for a digest is a
-- table of its own, and a digest records its messages on its own row.
--
-- Before: the scheduler pass marked every message it put in a digest with `messages.digest_id`.
-- That UPDATE could not be HOT (digest_id was in the predicates of the pending and digested
-- indexes), so each message got a new row version, five index entries and a foreign-key check:
-- about half of the pass's time in PostgreSQL. Now:
--   * `pending_messages` holds one narrow row per message waiting for a digest (not yet in one);
--     the pass deletes the rows of the messages it puts in a digest (and of those read or archived
--     meanwhile) and never writes `messages`;
--   * `digests.message_ids` lists a digest's messages (what delivery checks at send time, what a
--     digest that failed for good hands back, which digest a message went in);
--   * a message is pending when it has a `pending_messages` row and is unread and unarchived.
-- Triggers keep the queue whatever writes `messages` (intake, import, tests, benchmarks): a new
-- unread, unarchived message is queued; a message read or archived before any digest took it and
-- then marked unread or unarchived again is queued again; deleted messages leave the queue.
-- Erasure deletes the account's messages (their foreign key cascades), and the trigger their queue
-- rows with them; the retention purge forgets the months it drops. See docs/digests.md.

CREATE TABLE pending_messages (
    -- No foreign key: the queue follows `messages`, whose own key cascades from the account
    -- (a check per queued message cost intake a fifth of its database time per row).
    account_id  bigint NOT NULL,
    message_id  bigint NOT NULL,
    created_at  timestamptz NOT NULL,   -- the message's (its partition, and the window's bound)
    category    text NOT NULL,          -- the message's (which windows take it)
    PRIMARY KEY (account_id, message_id)
);

ALTER TABLE digests ADD COLUMN message_ids bigint[] NOT NULL DEFAULT '{}';

-- Move the existing data: each digest's messages onto its row, the pending ones into the queue.
UPDATE digests d SET message_ids = x.ids
FROM (SELECT digest_id, array_agg(id ORDER BY id) AS ids
      FROM messages WHERE digest_id IS NOT NULL GROUP BY digest_id) x
WHERE d.id = x.digest_id;

INSERT INTO pending_messages (account_id, message_id, created_at, category)
SELECT account_id, id, created_at, category FROM messages
WHERE digest_id IS NULL AND read_at IS NULL AND archived_at IS NULL;

DROP INDEX messages_pending_idx;
DROP INDEX messages_digest_idx;
ALTER TABLE messages DROP COLUMN digest_id;  -- its foreign key goes with it

-- A message's digest, if any (a digest that failed for good has handed its messages back and
-- lists none): for exports, the console and tests.
CREATE VIEW message_digests AS
SELECT d.account_id, i.message_id, d.id AS digest_id
FROM digests d CROSS JOIN LATERAL unnest(d.message_ids) AS i (message_id);

CREATE FUNCTION pending_messages_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pending_messages (account_id, message_id, created_at, category)
    SELECT account_id, id, created_at, category FROM added
    WHERE read_at IS NULL AND archived_at IS NULL;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_pending_added AFTER INSERT ON messages
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION pending_messages_added();

-- Unread or unarchived again: pending again unless a digest already took it. A digest that holds
-- a message ended after the message was created, so only the account's later digests are looked at.
CREATE FUNCTION pending_messages_waiting_again() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM digests d
                   WHERE d.account_id = NEW.account_id AND d.window_end > NEW.created_at
                     AND NEW.id = ANY (d.message_ids)) THEN
        INSERT INTO pending_messages (account_id, message_id, created_at, category)
        VALUES (NEW.account_id, NEW.id, NEW.created_at, NEW.category)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_pending_again AFTER UPDATE OF read_at, archived_at ON messages
    FOR EACH ROW
    WHEN ((OLD.read_at IS NOT NULL OR OLD.archived_at IS NOT NULL)
          AND NEW.read_at IS NULL AND NEW.archived_at IS NULL)
    EXECUTE FUNCTION pending_messages_waiting_again();

CREATE FUNCTION pending_messages_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM pending_messages p USING removed r
    WHERE p.account_id = r.account_id AND p.message_id = r.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_pending_deleted AFTER DELETE ON messages
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION pending_messages_deleted();

CREATE FUNCTION pending_messages_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM pending_messages;  -- not TRUNCATE: the same statement may be truncating it too
    RETURN NULL;
END
$$;

-- With no foreign key, `TRUNCATE messages` (benchmarks, tests) does not reach the queue by itself.
CREATE TRIGGER messages_pending_truncated AFTER TRUNCATE ON messages
    FOR EACH STATEMENT EXECUTE FUNCTION pending_messages_truncated();

-- The retention purge drops whole months, which fires no trigger: the queue forgets the messages of
-- each month dropped (named messages_YYYY_MM, migration 0019). Only those: a pass may hold the
-- rows of other messages, and this never touches a queue row whose message still exists.
ALTER FUNCTION messages_drop_partitions(timestamptz) RENAME TO messages_drop_month_partitions;

CREATE FUNCTION messages_drop_partitions(before timestamptz)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    name text;
    month timestamptz;
BEGIN
    FOR name IN SELECT messages_drop_month_partitions(before) LOOP
        month := to_date(right(name, 7), 'YYYY_MM')::timestamp AT TIME ZONE 'UTC';
        DELETE FROM pending_messages WHERE created_at >= month AND created_at < month + interval '1 month';
        RETURN NEXT name;
    END LOOP;
END
$$;

ANALYZE pending_messages;
