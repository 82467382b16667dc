-- Digests: member preferences, the scheduler pass (claim due accounts, build their digests in a
-- few set-based statements per batch) and the preview. See notifier/digest.py and docs/digests.md.

-- name: preferences_for_update
SELECT id, digest_frequency, digest_hour, digest_weekday, timezone, newsletter,
       digest_window_start, next_digest_at
FROM accounts
WHERE id = $1
FOR NO KEY UPDATE;

-- name: preferences_by_external_id
SELECT id, digest_frequency, digest_hour, digest_weekday, timezone, newsletter,
       digest_window_start, next_digest_at
FROM accounts
WHERE external_id = $1;

-- name: account_id_by_external_id
SELECT id FROM accounts WHERE external_id = $1;

-- name: update_preferences
UPDATE accounts
SET digest_frequency = $2, digest_hour = $3, digest_weekday = $4, timezone = $5, newsletter = $6,
    digest_window_start = $7, next_digest_at = $8, updated_at = now()
WHERE id = $1;

-- name: insert_consent
-- The default list's consent (topic `newsletter`); other lists: `insert_list_consent`.
INSERT INTO consents (account_id, topic, granted, source, wording, wording_version, list_id)
VALUES ($1, 'newsletter', $2, $3, $4, $5, (SELECT id FROM lists WHERE is_default));

-- name: has_pending_messages
SELECT EXISTS (
    SELECT 1 FROM messages
    WHERE account_id = $1 AND digest_id IS NULL AND read_at IS NULL AND archived_at IS NULL
);

-- name: start_schedule
-- A new account's first window opens at $2 and ends at $3 (NULL for off and immediate).
UPDATE accounts SET digest_window_start = $2, next_digest_at = $3 WHERE id = $1;

-- name: schedule_immediate
-- Messages arrived for these accounts at $3 (default: the transaction's time): members on
-- "immediate" get an e-mail one coalescing window ($2) after the first message that is not yet
-- due. Locks in id order (no deadlock between two batches), and only rows whose due time
-- actually moves earlier.
WITH due AS (
    SELECT id FROM accounts
    WHERE id = ANY($1::bigint[]) AND digest_frequency = 'immediate'
      AND (next_digest_at IS NULL OR next_digest_at > coalesce($3::timestamptz, now()) + $2::interval)
    ORDER BY id
    FOR NO KEY UPDATE
)
UPDATE accounts a SET next_digest_at = coalesce($3::timestamptz, now()) + $2::interval
FROM due WHERE a.id = due.id;

-- name: repair_immediate
-- The safety net behind the intake hook (which runs after commit and may fail): members on
-- "immediate" with waiting messages but no due time become due one coalescing window ($1) after
-- their oldest waiting message.
UPDATE accounts a SET next_digest_at = p.first + $1::interval
FROM (
    SELECT m.account_id, min(m.created_at) AS first
    FROM accounts i
    JOIN messages m ON m.account_id = i.id
    WHERE i.digest_frequency = 'immediate' AND i.next_digest_at IS NULL
      AND m.digest_id IS NULL AND m.read_at IS NULL AND m.archived_at IS NULL
    GROUP BY m.account_id
) p
WHERE a.id = p.account_id AND a.digest_frequency = 'immediate' AND a.next_digest_at IS NULL;

-- name: claim_due_accounts
-- One batch of accounts whose digest is due, locked for this transaction; a concurrent pass skips
-- them and takes the next ones. NO KEY UPDATE: intake inserting messages (a foreign-key share
-- lock on the account) neither blocks nor is blocked by the pass.
SELECT id, external_id, email, name, locale, digest_frequency, digest_hour, digest_weekday, timezone,
       digest_window_start, next_digest_at
FROM accounts
WHERE next_digest_at <= $1
ORDER BY next_digest_at
LIMIT $2
FOR NO KEY UPDATE SKIP LOCKED;

-- name: build_digests
-- The whole batch in one statement, one snapshot. For each claimed account (id, window start and
-- end, frequency, time zone, name, address, whether the address can be mailed):
--   * record a digest if it has unread, unarchived, undigested messages created before the window's
--     end (unique (account_id, window_end): an existing one is left alone and the account gets
--     nothing here);
--   * mark those messages as in it (each locked first; one locked by someone else is skipped);
--   * build the e-mail's content: categories ordered by their newest message, at most $11 messages
--     each (newest first) with the count and how many more, a snippet of each body, its local time;
--   * write the outbox row (kind digest, queue $9, template $10, unique per digest).
-- Returns one row per digest: how many messages were marked, and the e-mail's id (NULL when the
-- address cannot be mailed).
-- Every join is driven by the batch (at most a batch's accounts and their messages, found by
-- index), whatever the plan: the statement is prepared once per connection and PostgreSQL plans it
-- generically from the sixth run, guessing 10 rows for each array and knowing nothing of messages
-- that arrived since the last ANALYZE (see docs/digests.md, "Concurrency and plans").
-- The same content in Python: notifier.digest_email.build_context (previews); a test keeps them equal.
WITH batch AS (
    SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::timestamptz[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::boolean[], $12::text[])
        AS b (account_id, window_start, window_end, frequency, timezone, name, email, mailable, inbox_url)
),
pending AS (
    -- Per account through messages_pending_idx (a LATERAL subquery that locks rows is never
    -- flattened: one index probe per account, whatever the statistics say). Each message is locked
    -- here, and one locked by someone else (being read, archived or purged right now) is skipped:
    -- it stays undigested and goes in the next digest if still unread. So the pass never waits
    -- for a message row, and what is counted is what gets marked.
    SELECT m.id, b.account_id
    FROM batch b
    CROSS JOIN LATERAL (
        SELECT id FROM messages
        WHERE account_id = b.account_id AND digest_id IS NULL AND read_at IS NULL
          AND archived_at IS NULL AND created_at < b.window_end
        FOR NO KEY UPDATE SKIP LOCKED
    ) m
),
counts AS (
    SELECT account_id, count(*) AS n FROM pending GROUP BY account_id
),
digest AS (
    INSERT INTO digests (account_id, frequency, window_start, window_end, message_count)
    SELECT b.account_id, b.frequency, b.window_start, b.window_end, c.n
    FROM batch b JOIN counts c ON c.account_id = b.account_id
    -- An address that cannot be mailed gets no digest: its messages stay pending, never marked
    -- as digested without an e-mail.
    WHERE b.mailable
    ON CONFLICT (account_id, window_end) DO NOTHING
    RETURNING id, account_id, message_count
),
marked AS (
    -- By primary key from the locked rows, with no condition on `messages` itself: a condition
    -- like `digest_id IS NULL` is estimated from statistics, and right after a large intake
    -- (none yet) it made the planner expect one row and loop over every pending message for
    -- each one marked. The conditions were checked under the row lock in `pending`.
    UPDATE messages m SET digest_id = d.id
    FROM pending p JOIN digest d ON d.account_id = p.account_id
    WHERE m.id = p.id
    RETURNING m.id, m.account_id, m.digest_id, m.category, m.subject, m.body, m.url, m.created_at
),
ranked AS (
    SELECT mk.*,
           row_number() OVER (PARTITION BY mk.digest_id, mk.category
                              ORDER BY mk.created_at DESC, mk.id DESC) AS rn,
           count(*) OVER (PARTITION BY mk.digest_id, mk.category) AS n,
           max(mk.created_at) OVER (PARTITION BY mk.digest_id, mk.category) AS newest
    FROM marked mk
),
shown AS (
    SELECT r.digest_id, r.category, r.n, r.newest, r.rn, r.id,
           jsonb_build_object(
               'id', r.id,
               'subject', r.subject,
               'url', r.url,
               'snippet', CASE WHEN length(f.flat) <= 160 THEN f.flat ELSE rtrim(left(f.flat, 159)) END,
               'cut', length(f.flat) > 160,
               'when', to_char(r.created_at AT TIME ZONE b.timezone, 'Dy FMDD Mon, HH24:MI')
           ) AS item
    FROM ranked r
    JOIN batch b ON b.account_id = r.account_id
    CROSS JOIN LATERAL (
        -- Collapse whitespace runs; the cheap test first spares most bodies the slow replace.
        SELECT btrim(CASE WHEN left(r.body, 2000) ~ '\s\s|[\t\n\r\f\v]'
                          THEN regexp_replace(left(r.body, 2000), '\s+', ' ', 'g')
                          ELSE left(r.body, 2000) END) AS flat
    ) f
    WHERE r.rn <= $11
),
categories AS (
    SELECT s.digest_id, s.category, s.n, s.newest,
           max(s.id) FILTER (WHERE s.rn = 1) AS newest_id,
           jsonb_agg(s.item ORDER BY s.rn) AS items
    FROM shown s
    GROUP BY s.digest_id, s.category, s.n, s.newest
),
contents AS (
    SELECT c.digest_id, sum(c.n)::integer AS total,
           jsonb_agg(jsonb_build_object('name', c.category, 'count', c.n, 'messages', c.items,
                                        'more', c.n - jsonb_array_length(c.items))
                     ORDER BY c.newest DESC, c.newest_id DESC) AS categories
    FROM categories c
    GROUP BY c.digest_id
),
outbox AS (
    INSERT INTO emails (kind, queue, account_id, to_address, template, context, digest_id)
    SELECT 'digest', $9, d.account_id, b.email, $10,
           jsonb_build_object(
               'name', b.name,
               'frequency', b.frequency,
               'total', x.total,
               'categories', x.categories,
               'inbox_url', b.inbox_url,
               'window_start', to_char(b.window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
               'window_end', to_char(b.window_end AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
           ),
           d.id
    FROM contents x
    JOIN digest d ON d.id = x.digest_id
    JOIN batch b ON b.account_id = d.account_id
    WHERE b.mailable
    ON CONFLICT (digest_id) WHERE digest_id IS NOT NULL DO NOTHING
    RETURNING id, digest_id
)
SELECT d.id AS digest_id, d.account_id, coalesce(x.total, 0) AS marked, o.id AS email_id
FROM digest d
LEFT JOIN contents x ON x.digest_id = d.id
LEFT JOIN outbox o ON o.digest_id = d.id;

-- name: known_timezones
-- The zone names PostgreSQL knows (read once per process: the view reads the zone files).
SELECT name FROM pg_timezone_names;

-- name: advance_windows
-- Close the claimed windows: the next one starts at the old end and ends at the given time.
-- Members on "immediate" (no clock) get a due time only if messages are still waiting, e.g. one
-- that arrived after the window's end while this pass was running.
UPDATE accounts a
SET digest_window_start = b.window_end,
    next_digest_at = CASE
        WHEN a.digest_frequency = 'immediate' THEN (
            SELECT min(m.created_at) + $4::interval FROM messages m
            WHERE m.account_id = a.id AND m.digest_id IS NULL AND m.read_at IS NULL
              AND m.archived_at IS NULL)
        ELSE b.next_due
    END
FROM unnest($1::bigint[], $2::timestamptz[], $3::timestamptz[]) AS b (id, window_end, next_due)
WHERE a.id = b.id AND a.id = ANY($1::bigint[]);  -- the second test lets the planner use the key

-- name: preview_account
SELECT id, external_id, email, name, locale, digest_frequency, digest_hour, digest_weekday, timezone,
       digest_window_start, next_digest_at
FROM accounts
WHERE external_id = $1;

-- name: preview_messages
-- What the next digest would hold if it were built at window end $2 (nothing is marked).
SELECT id, account_id, category, subject, body, url, created_at
FROM messages
WHERE account_id = $1 AND digest_id IS NULL AND read_at IS NULL AND archived_at IS NULL
  AND created_at < $2
ORDER BY created_at DESC, id DESC;

-- name: digest_messages_gone
-- At send time: messages of these digests read or archived since the digest was built, by
-- digest and category (almost always none).
SELECT digest_id, category, array_agg(id) AS ids
FROM messages
WHERE digest_id = ANY($1::bigint[]) AND (read_at IS NOT NULL OR archived_at IS NOT NULL)
GROUP BY digest_id, category;

-- name: due_at
-- What a pass as of $1 would find (`notifier digests run --dry-run`): accounts due, and those with
-- something to send (unread, not archived, not yet digested, created before the window's end, as
-- `build_digests` selects them). Writes nothing.
SELECT count(*) AS due,
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM messages m
           WHERE m.account_id = a.id AND m.digest_id IS NULL AND m.read_at IS NULL
             AND m.archived_at IS NULL AND m.created_at < a.next_digest_at)) AS with_messages
FROM accounts a
WHERE a.next_digest_at <= $1;
