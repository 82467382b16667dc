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
INSERT INTO consents (account_id, topic, granted, source, wording, wording_version)
VALUES ($1, 'newsletter', $2, $3, $4, $5);

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
ORDER BY next_digest_at, id
LIMIT $2
FOR NO KEY UPDATE SKIP LOCKED;

-- name: build_digests
-- For the claimed batch (account, window start, window end, frequency): record a digest for every
-- account with unread, unarchived, undigested messages created before its window end, and mark
-- those messages as in it; returns the messages, newest first per account. One statement, one
-- snapshot: the count and the marked messages agree. A digest that already exists for the window
-- (unique (account_id, window_end)) is left alone and its account gets nothing here.
WITH batch AS (
    SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::timestamptz[], $4::text[])
        AS b (account_id, window_start, window_end, frequency)
),
pending AS (
    SELECT m.id, m.account_id
    FROM batch b
    JOIN messages m ON m.account_id = b.account_id
    WHERE m.digest_id IS NULL AND m.read_at IS NULL AND m.archived_at IS NULL
      AND m.created_at < b.window_end
),
counts AS (
    SELECT account_id, count(*) AS n FROM pending GROUP BY account_id
),
digest AS (
    INSERT INTO digests (account_id, frequency, window_start, window_end, message_count)
    SELECT b.account_id, b.frequency, b.window_start, b.window_end, c.n
    FROM batch b JOIN counts c ON c.account_id = b.account_id
    ON CONFLICT (account_id, window_end) DO NOTHING
    RETURNING id, account_id
),
marked AS (
    UPDATE messages m SET digest_id = d.id
    FROM pending p JOIN digest d ON d.account_id = p.account_id
    WHERE m.id = p.id AND m.digest_id IS NULL AND m.read_at IS NULL AND m.archived_at IS NULL
    RETURNING m.id, m.account_id, m.digest_id, m.category, m.subject, m.body, m.url, m.created_at
)
SELECT * FROM marked ORDER BY account_id, created_at DESC, id DESC;

-- name: fix_digest_counts
-- A message read between the snapshot and its row lock is left out of the digest; keep the
-- recorded count equal to what was marked.
UPDATE digests d SET message_count = c.n
FROM unnest($1::bigint[], $2::integer[]) AS c (id, n)
WHERE d.id = c.id AND d.message_count <> c.n;

-- name: insert_digest_emails
-- The outbox rows of a batch's digests, one statement; `emails_digest_idx` (unique digest_id)
-- makes a second insert for the same digest impossible.
INSERT INTO emails (kind, queue, account_id, to_address, template, context, digest_id)
SELECT 'digest', $1, e.account_id, e.to_address, $2, e.context, e.digest_id
FROM unnest($3::bigint[], $4::text[], $5::jsonb[], $6::bigint[])
    AS e (account_id, to_address, context, digest_id)
ON CONFLICT (digest_id) WHERE digest_id IS NOT NULL DO NOTHING
RETURNING id;

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
WHERE a.id = b.id;

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
