-- Digests: member preferences, the scheduler pass (claim due accounts, build their digests in a
-- few set-based statements per batch) and the preview. See notifier/digest.py and docs/digests.md.

-- name: preferences_for_update
SELECT id, digest_frequency, digest_hour, digest_weekday, timezone, newsletter,
       digest_categories AS categories, quiet_hours, digest_clocks, digest_window_start, next_digest_at
FROM accounts
WHERE id = $1
FOR NO KEY UPDATE;

-- name: preferences_by_external_id
SELECT id, digest_frequency, digest_hour, digest_weekday, timezone, newsletter,
       digest_categories AS categories, quiet_hours, digest_clocks, digest_window_start, next_digest_at
FROM accounts
WHERE external_id = $1;

-- name: account_id_by_external_id
SELECT id FROM accounts WHERE external_id = $1;

-- name: update_preferences
UPDATE accounts
SET digest_frequency = $2, digest_hour = $3, digest_weekday = $4, timezone = $5, newsletter = $6,
    digest_window_start = $7, next_digest_at = $8, digest_categories = $9, quiet_hours = $10,
    digest_clocks = $11, updated_at = now()
WHERE id = $1;

-- name: insert_consent
-- The default list's consent (topic `newsletter`); other lists: `set_list_members` (sql/lists.sql).
INSERT INTO consents (account_id, topic, granted, source, wording, wording_version, list_id)
VALUES ($1, 'newsletter', $2, $3, $4, $5, (SELECT id FROM lists WHERE is_default));

-- name: has_pending_messages
SELECT EXISTS (
    SELECT 1 FROM pending_messages q
    JOIN messages m ON m.id = q.message_id AND m.created_at = q.created_at
    WHERE q.account_id = $1 AND m.read_at IS NULL AND m.archived_at IS NULL
);

-- name: start_schedule
-- An account's windows: the account's window start $2, next due time $3 (NULL: none) and the
-- windows per frequency $4 (notifier/digest_windows.py; empty when the columns say it all).
UPDATE accounts SET digest_window_start = $2, next_digest_at = $3, digest_clocks = $4 WHERE id = $1;

-- name: last_digest_per_frequency
-- When the last digest of each frequency was due (a change never makes a second one in its period).
SELECT f AS frequency, max(d.window_end) AS last
FROM digests d CROSS JOIN LATERAL unnest(coalesce(d.frequencies, ARRAY[d.frequency])) AS f
WHERE d.account_id = $1
GROUP BY f;

-- name: repair_immediate
-- The safety net behind the intake hook (which runs after commit and may fail): members on
-- "immediate" with waiting messages but no due time become due one coalescing window ($1) after
-- their oldest waiting message.
-- Per idle immediate member through the queue's primary key (the aggregate keeps the subquery per
-- account: joined to the whole queue, the planner hashed all of it and of `messages` every pass).
UPDATE accounts a SET next_digest_at = p.first + $1::interval
FROM (
    SELECT i.id AS account_id, w.first
    FROM accounts i
    CROSS JOIN LATERAL (
        SELECT min(q.created_at) AS first
        FROM pending_messages q
        JOIN messages m ON m.id = q.message_id AND m.created_at = q.created_at
        WHERE q.account_id = i.id AND m.read_at IS NULL AND m.archived_at IS NULL
    ) w
    WHERE i.digest_frequency = 'immediate' AND i.next_digest_at IS NULL AND w.first IS NOT NULL
) p
WHERE a.id = p.account_id AND a.digest_frequency = 'immediate' AND a.next_digest_at IS NULL;

-- name: claim_due_accounts
-- One batch of accounts whose digest is due, locked for this transaction; a concurrent pass skips
-- them and takes the next ones. NO KEY UPDATE: intake inserting messages (a foreign-key share
-- lock on the account) neither blocks nor is blocked by the pass.
SELECT id, external_id, email, name, locale, digest_frequency, digest_hour, digest_weekday, timezone,
       digest_categories, quiet_hours, digest_clocks, digest_window_start, next_digest_at
FROM accounts
WHERE next_digest_at <= $1
ORDER BY next_digest_at
LIMIT $2
FOR NO KEY UPDATE SKIP LOCKED;

-- name: batch_without_jit
-- For the rest of a batch's transaction. PostgreSQL's custom plans of `build_digests` (its first five
-- runs on each connection, planned with the batch's 500 accounts) are costed above `jit_above_cost`,
-- and JIT-compiling the statement took 1.2-1.9 s of CPU per batch, where running it takes 0.3 s
-- (docs/benchmarks.md, "The queue of pending messages").
SET LOCAL jit = off;

-- name: build_digests
-- The whole batch in one statement, one snapshot. For each claimed account (id, window start and
-- end, frequency, time zone, name, address, whether the address can be mailed):
--   * record a digest if it has pending messages (queued in `pending_messages`, unread, unarchived)
--     created before the window's end, listing them (`message_ids`; unique (account_id,
--     window_end): an existing one is left alone and the account gets nothing here);
--   * take those messages out of the queue (each locked first; one locked by someone else is
--     skipped and stays queued), with those read or archived since they were queued;
--   * build the e-mail's content: categories ordered by their newest message, at most $11 messages
--     each (newest first) with the count and how many more, a snippet of each body, when it came
--     (UTC: delivery writes it in the member's language and time zone);
--   * write the outbox row (kind digest, queue $9, template $10, unique per digest).
-- `messages` itself is only read (and locked), never written: see migration 0021.
-- Returns one row per digest: how many messages it holds, and the e-mail's id (NULL when the
-- address cannot be mailed).
-- Which messages: per account, every category when $14 (all due) is true; otherwise those named in
-- $13 (space-separated; category keys have no spaces), and a category not among the declared ones
-- ($17, read when the batch began) when $15 is true. $16: the frequencies whose windows close
-- (space-separated), recorded with the digest.
-- Every join is driven by the batch (at most a batch's accounts and their messages, found by
-- index), whatever the plan: the statement is prepared once per connection and PostgreSQL plans it
-- generically from the sixth run, guessing 10 rows for each array and knowing nothing of messages
-- that arrived since the last ANALYZE (see docs/digests.md, "Concurrency and plans").
-- The same content in Python: notifier.digest_email.build_context (previews); a test keeps them equal.
WITH batch AS (
    SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::timestamptz[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::boolean[], $12::text[], $13::text[], $14::boolean[],
                         $15::boolean[], $16::text[])
        AS b (account_id, window_start, window_end, frequency, timezone, name, email, mailable, inbox_url,
              included, all_due, others_due, frequencies)
),
pending AS (
    -- Per account through the queue's primary key (a LATERAL subquery that locks rows is never
    -- flattened: one index probe per account, whatever the statistics say), each message read by
    -- primary key (its partition too) and locked: one locked by someone else (being read, archived
    -- or purged right now) is skipped and stays queued, so the pass never waits for a message row.
    -- `waiting`: still unread and unarchived (the lock reads the latest version); the others were
    -- read or archived since they were queued and leave the queue without a digest.
    SELECT m.id, m.created_at, b.account_id, m.waiting, m.category, m.subject, m.body, m.url
    FROM batch b
    CROSS JOIN LATERAL (
        SELECT msg.id, msg.created_at, msg.read_at IS NULL AND msg.archived_at IS NULL AS waiting,
               msg.category, msg.subject, msg.body, msg.url
        FROM pending_messages q
        JOIN messages msg ON msg.id = q.message_id AND msg.created_at = q.created_at
        WHERE q.account_id = b.account_id AND q.created_at < b.window_end
          AND (b.all_due OR CASE WHEN q.category = ANY(string_to_array(b.included, ' ')) THEN true
                                 WHEN q.category = ANY($17::text[]) THEN false
                                 ELSE b.others_due END)
        FOR NO KEY UPDATE OF msg SKIP LOCKED
    ) m
),
counts AS (
    SELECT account_id, count(*) AS n, array_agg(id ORDER BY id) AS ids
    FROM pending WHERE waiting GROUP BY account_id
),
digest AS (
    INSERT INTO digests (account_id, frequency, frequencies, window_start, window_end, message_count,
                         message_ids)
    SELECT b.account_id, b.frequency, string_to_array(b.frequencies, ' '), b.window_start, b.window_end,
           c.n, c.ids
    FROM batch b JOIN counts c ON c.account_id = b.account_id
    -- An address that cannot be mailed gets no digest: its messages stay pending, never taken
    -- as digested without an e-mail.
    WHERE b.mailable
    ON CONFLICT (account_id, window_end) DO NOTHING
    RETURNING id, account_id, message_count
),
dequeued AS (
    -- Out of the queue: the messages now in a digest (its `message_ids`), and those read or
    -- archived since they were queued (marked unread or unarchived again, a trigger queues them
    -- again). Messages of an account that got no digest here (an existing one for the window, an
    -- address that cannot be mailed) stay queued.
    -- Each pending message is checked against the batch's digests through a hashed subplan (the
    -- `IN`, inside an OR) and its queue row found by the queue's key: written as `pending LEFT
    -- JOIN digest` the planner (which guesses a few rows for each) compared every pending message
    -- with every digest of the batch, ~5 million pairs per 500 digests, two thirds of the
    -- statement's CPU (docs/benchmarks.md, "Digests, the worker's side").
    DELETE FROM pending_messages q
    USING pending p
    WHERE q.account_id = p.account_id AND q.message_id = p.id
      AND (NOT p.waiting OR p.account_id IN (SELECT account_id FROM digest))
),
marked AS (
    SELECT p.id, p.account_id, d.id AS digest_id, p.category, p.subject, p.body, p.url, p.created_at
    FROM pending p JOIN digest d ON d.account_id = p.account_id
    WHERE p.waiting
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
               'at', to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
           ) AS item
    FROM ranked r
    JOIN batch b ON b.account_id = r.account_id
    CROSS JOIN LATERAL (
        -- Collapse whitespace runs; the cheap test first spares most bodies the slow replace.
        -- OFFSET 0 keeps the subquery from being pulled up: inlined, `flat` would be computed
        -- (regular expression included) once per use, four times a message (~90 µs a digest).
        SELECT btrim(CASE WHEN left(r.body, 2000) ~ '\s\s|[\t\n\r\f\v]'
                          THEN regexp_replace(left(r.body, 2000), '\s+', ' ', 'g')
                          ELSE left(r.body, 2000) END) AS flat
        OFFSET 0
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
-- Close the claimed windows: the account's next window starts at the old end; its next due time
-- and windows per frequency were computed by the pass (notifier/digest_windows.py).
UPDATE accounts a
SET digest_window_start = b.window_end, next_digest_at = b.next_due, digest_clocks = b.clocks::jsonb
FROM unnest($1::bigint[], $2::timestamptz[], $3::timestamptz[], $4::text[])
    AS b (id, window_end, next_due, clocks)
WHERE a.id = b.id AND a.id = ANY($1::bigint[]);  -- the second test lets the planner use the key

-- name: waiting_since
-- The oldest pending (queued, unread, unarchived) message per account in its "immediate"
-- categories: when those are due. Per account ($1): the declared categories it gets at once ($2,
-- space-separated) and whether an undeclared category is among them ($3); $4: the declared ones.
-- Per account through the queue's primary key (the aggregate keeps the subquery per account).
SELECT b.account_id, w.first
FROM unnest($1::bigint[], $2::text[], $3::boolean[]) AS b (account_id, included, others)
CROSS JOIN LATERAL (
    SELECT min(q.created_at) AS first
    FROM pending_messages q
    JOIN messages m ON m.id = q.message_id AND m.created_at = q.created_at
    WHERE q.account_id = b.account_id AND m.read_at IS NULL AND m.archived_at IS NULL
      AND CASE WHEN q.category = ANY(string_to_array(b.included, ' ')) THEN true
               WHEN q.category = ANY($4::text[]) THEN false
               ELSE b.others END
) w
WHERE w.first IS NOT NULL;

-- name: immediate_candidates
-- Accounts that may have an "immediate" category, with what decides it, and the transaction's time.
SELECT id, digest_frequency, digest_hour, digest_weekday, timezone, digest_categories, quiet_hours,
       now() AS at
FROM accounts WHERE id = ANY($1::bigint[]);

-- name: schedule_due
-- Make these accounts due at the given times unless already due sooner. Locks in id order (no
-- deadlock between two batches), and only rows whose due time actually moves earlier. An account
-- whose one window lived in its columns (`digest_clocks` empty) gets it written out first, so that
-- the window's end is not taken for the earlier due time (notifier/digest_windows.py).
WITH due AS (
    SELECT a.id, d.at FROM accounts a
    JOIN unnest($1::bigint[], $2::timestamptz[]) AS d (id, at) ON d.id = a.id
    WHERE a.next_digest_at IS NULL OR a.next_digest_at > d.at
    ORDER BY a.id
    FOR NO KEY UPDATE OF a
)
UPDATE accounts a
SET next_digest_at = due.at,
    digest_clocks = CASE
        WHEN a.digest_clocks = '{}' AND a.next_digest_at IS NOT NULL
             AND a.digest_frequency IN ('hourly', 'daily', 'weekly')
        THEN jsonb_build_object(a.digest_frequency, jsonb_build_object(
            'start', to_char(a.digest_window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
            'end', to_char(a.next_digest_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')))
        ELSE a.digest_clocks
    END
FROM due WHERE a.id = due.id AND (a.next_digest_at IS NULL OR a.next_digest_at > due.at);

-- name: preview_account
SELECT id, external_id, email, name, locale, digest_frequency, digest_hour, digest_weekday, timezone,
       digest_categories, quiet_hours, digest_clocks, digest_window_start, next_digest_at
FROM accounts
WHERE external_id = $1;

-- name: preview_messages
-- What the next digest would hold if it were built at window end $2 (nothing is marked).
SELECT m.id, m.account_id, m.category, m.subject, m.body, m.url, m.created_at
FROM pending_messages q
JOIN messages m ON m.id = q.message_id AND m.created_at = q.created_at
WHERE q.account_id = $1 AND m.read_at IS NULL AND m.archived_at IS NULL AND q.created_at < $2
ORDER BY m.created_at DESC, m.id DESC;

-- name: digest_messages_gone
-- At send time: messages of these digests read or archived since the digest was built, by
-- digest and category (almost always none).
-- Per digest, one range of the member's inbox index (account, id) in each month before the
-- window's end (a digest's messages were all created before it), instead of one look-up per id:
-- each id alone cannot prune the months it is not in unless they are sealed (messages_by_id calls
-- three SQL functions per id), which cost ~200 µs of CPU per digest of 20 (docs/benchmarks.md,
-- "Digests, the worker's side"). The range holds the digest's messages and whatever else of the
-- member's arrived between them; `= ANY` keeps the digest's own.
SELECT d.id AS digest_id, m.category, array_agg(m.id) AS ids
FROM digests d
CROSS JOIN LATERAL (SELECT min(i) AS lo, max(i) AS hi FROM unnest(d.message_ids) AS i) r
CROSS JOIN LATERAL (
    SELECT x.id, x.category FROM messages x
    WHERE x.account_id = d.account_id AND x.id BETWEEN r.lo AND r.hi AND x.created_at < d.window_end
      AND x.id = ANY(d.message_ids)
      AND (x.read_at IS NOT NULL OR x.archived_at IS NOT NULL)
) m
WHERE d.id = ANY($1::bigint[])
GROUP BY d.id, m.category;

-- name: due_at
-- What a pass as of $1 would find (`notifier digests run --dry-run`): accounts due, and those with
-- something to send (pending: queued, unread, not archived; created before the window's end, as
-- `build_digests` selects them). Writes nothing.
SELECT count(*) AS due,
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM pending_messages q
           JOIN messages m ON m.id = q.message_id AND m.created_at = q.created_at
           WHERE q.account_id = a.id AND q.created_at < a.next_digest_at
             AND m.read_at IS NULL AND m.archived_at IS NULL)) AS with_messages
FROM accounts a
WHERE a.next_digest_at <= $1;
