-- name: insert_message
-- One round trip: resolve the account, declare the category if it is new (with the defaults:
-- docs/digests.md, "Categories") and insert; no row means no such account. `maybe_immediate`:
-- the member may get this category at once (checked precisely by digest.messages_arrived).
WITH account AS (
    SELECT id, digest_frequency, digest_categories FROM accounts WHERE external_id = $1
), declared AS (
    INSERT INTO categories (key)
    SELECT $2 FROM account WHERE NOT EXISTS (SELECT 1 FROM categories WHERE key = $2)
    ON CONFLICT DO NOTHING
), inserted AS (
    INSERT INTO messages (account_id, category, subject, body, url, data)
    SELECT id, $2, $3, $4, $5, $6 FROM account
    RETURNING id, account_id, category, subject, body, url, data, created_at
)
SELECT inserted.*,
       (account.digest_frequency = 'immediate' OR account.digest_categories <> '{}'
        OR EXISTS (SELECT 1 FROM categories WHERE key = $2 AND default_frequency = 'immediate'))
           AS maybe_immediate
FROM inserted, account;

-- name: insert_messages_batch
-- Many messages in one statement, passed as one JSON array (text) of {account, category, subject,
-- body, url?, data?}: one parameter is far cheaper to encode than an array per column. `ord` is
-- the 1-based position in that array. Ids are drawn before the insert, in input order, so that
-- each position maps to its new id; items whose account does not exist are absent.
WITH items AS (
    SELECT *
    FROM ROWS FROM (
        json_to_recordset($1::text::json)
            AS (account text, category text, subject text, body text, url text, data jsonb)
    ) WITH ORDINALITY AS i (account, category, subject, body, url, data, ord)
), resolved AS MATERIALIZED (
    SELECT nextval('messages_id_seq') AS id, i.ord, a.id AS account_id,
           (a.digest_frequency = 'immediate' OR a.digest_categories <> '{}') AS maybe_immediate,
           i.category, i.subject, i.body, i.url, i.data
    FROM items i JOIN accounts a ON a.external_id = i.account
    ORDER BY i.ord  -- ids follow the input order (nextval runs after the sort)
), declared AS (
    -- New categories are declared with the defaults (docs/digests.md, "Categories").
    INSERT INTO categories (key)
    SELECT DISTINCT r.category FROM resolved r
    WHERE NOT EXISTS (SELECT 1 FROM categories c WHERE c.key = r.category)
    ON CONFLICT DO NOTHING
), inserted AS (
    INSERT INTO messages (id, account_id, category, subject, body, url, data)
    SELECT id, account_id, category, subject, body, url, data FROM resolved
)
SELECT r.ord, r.id, r.account_id,
       (r.maybe_immediate OR EXISTS (
           SELECT 1 FROM categories c WHERE c.key = r.category AND c.default_frequency = 'immediate'))
           AS maybe_immediate
FROM resolved r ORDER BY r.ord;

-- name: inbox_page
-- A page of the inbox of the account with external id $1, newest first below the cursor id ($2).
-- $3: only unread; $4: one category; $5: 'exclude', 'include' or 'only' archived messages; $6 rows
-- at most. The account comes in the same round trip: every row carries its id and registration
-- time; an empty page is one row whose message columns are NULL; no row: no such account.
-- The `/v1` listing and the member's own views (notifier.inbox.member_page).
SELECT a.id AS account_id, a.created_at AS registered_at,
       m.id, m.category, m.subject, m.body, m.url, m.data, m.created_at, m.read_at, m.seen_at, m.archived_at
FROM accounts a
LEFT JOIN LATERAL (
    SELECT id, category, subject, body, url, data, created_at, read_at, seen_at, archived_at
    FROM messages
    WHERE account_id = a.id
      AND ($2::bigint IS NULL OR id < $2)
      AND (NOT $3::boolean OR read_at IS NULL)
      AND ($4::text IS NULL OR category = $4)
      AND CASE $5::text WHEN 'include' THEN true
                        WHEN 'only' THEN archived_at IS NOT NULL
                        ELSE archived_at IS NULL END
    ORDER BY id DESC
    LIMIT $6
) m ON true
WHERE a.external_id = $1
ORDER BY m.id DESC;

-- name: get_inbox_message
SELECT m.id, m.category, m.subject, m.body, m.url, m.data, m.created_at, m.read_at, m.archived_at
FROM messages m JOIN accounts a ON a.id = m.account_id
WHERE a.external_id = $1 AND m.id = $2 AND messages_by_id(m.created_at, $2);

-- name: mark_message_read
-- Idempotent: the first read time is kept; a read message is also seen (as the member API marks it).
UPDATE messages m SET read_at = coalesce(m.read_at, now()), seen_at = coalesce(m.seen_at, now())
FROM accounts a
WHERE a.id = m.account_id AND a.external_id = $1 AND m.id = $2 AND messages_by_id(m.created_at, $2)
RETURNING m.account_id, m.id, m.category, m.subject, m.body, m.url, m.data, m.created_at, m.read_at, m.archived_at;

-- name: mark_message_unread
UPDATE messages m SET read_at = NULL
FROM accounts a
WHERE a.id = m.account_id AND a.external_id = $1 AND m.id = $2 AND messages_by_id(m.created_at, $2)
RETURNING m.account_id, m.id, m.category, m.subject, m.body, m.url, m.data, m.created_at, m.read_at, m.archived_at;

-- name: archive_message
-- Idempotent: the first archive time is kept. Archived messages leave digests and unread counts.
UPDATE messages m SET archived_at = coalesce(m.archived_at, now())
FROM accounts a
WHERE a.id = m.account_id AND a.external_id = $1 AND m.id = $2 AND messages_by_id(m.created_at, $2)
RETURNING m.account_id, m.id, m.category, m.subject, m.body, m.url, m.data, m.created_at, m.read_at, m.archived_at;

-- name: mark_all_read
-- Unread, unarchived messages of the account (of one category when $2 is set) up to id $3.
UPDATE messages SET read_at = now(), seen_at = coalesce(seen_at, now())
WHERE account_id = $1 AND read_at IS NULL AND archived_at IS NULL
  AND ($2::text IS NULL OR category = $2)
  AND ($3::bigint IS NULL OR id <= $3);

-- name: unread_counts
SELECT category, count(*) AS unread
FROM messages
WHERE account_id = $1 AND read_at IS NULL AND archived_at IS NULL
GROUP BY category
ORDER BY category;

-- name: purge_messages_before
-- One bounded slice of the retention purge's row deletes (oldest first), so no statement holds
-- locks for long: what is left after whole months were dropped (the month that straddles the
-- limit, and strays in the DEFAULT partition).
-- The slice is the oldest $2 rows and any that share the last one's time, deleted by a range of
-- the created_at index (a join by key would scan every partition).
DELETE FROM messages
WHERE created_at < $1
  AND created_at <= coalesce(
        (SELECT created_at FROM messages WHERE created_at < $1 ORDER BY created_at OFFSET $2 - 1 LIMIT 1),
        $1);

-- name: detach_message_partitions
-- The retention purge's whole months: every month partition that ended at or before $1, detached
-- (the only step that locks `messages`; a moment, whatever the month holds).
SELECT messages_detach_partitions($1) AS name;

-- name: detached_message_partitions
-- Month tables detached and not dropped yet (this purge's, and any a stopped purge left).
SELECT messages_detached_months() AS name;

-- name: drop_detached_message_partition
-- One detached month's queued messages forgotten and its table dropped (its files removed);
-- false when $1 is not a detached month.
SELECT messages_drop_detached($1);

-- name: create_message_partitions
-- Month partitions from this month to $1 months ahead (those that do not exist yet).
SELECT messages_create_partitions(now(), now(), $1) AS name;

-- name: seal_message_partitions
-- Record and enforce the id range of every month that ended a day ago or more (lookups by id
-- then skip the months that cannot hold the id: messages_by_id, migration 0019).
SELECT messages_seal_partitions(now() - interval '1 day') AS name;
