-- The outbox (emails), its events and the suppression list. See notifier/outbox.py.

-- name: add_email
INSERT INTO emails (kind, queue, account_id, to_address, template, subject, context,
                    digest_id, newsletter_id, idempotency_key, next_attempt_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, coalesce($11, now()))
ON CONFLICT DO NOTHING
RETURNING id

-- name: add_emails
INSERT INTO emails (kind, queue, account_id, to_address, template, subject, context,
                    digest_id, newsletter_id, next_attempt_at)
SELECT r.kind, r.queue, r.account_id, r.to_address, r.template, r.subject, r.context,
       r.digest_id, r.newsletter_id, coalesce(r.next_attempt_at, now())
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::jsonb[],
            $8::bigint[], $9::bigint[], $10::timestamptz[])
     AS r(kind, queue, account_id, to_address, template, subject, context,
          digest_id, newsletter_id, next_attempt_at)
ON CONFLICT DO NOTHING
RETURNING id

-- name: claim_emails
-- Due rows of one queue: queued and due, or being sent by someone whose lease ran out.
-- The claimed ids go to the UPDATE as an array (`id = ANY(ARRAY(...))`: one primary-key lookup
-- each), not as a join: joined, the planner hashed the whole `emails` table (every e-mail ever
-- sent) for each batch of 300 while the table was small enough for a seq scan to look cheap
-- (8 of the 16-28 ms of a claim at 10,000 rows, growing with the table; docs/benchmarks.md).
WITH due AS (
    SELECT id FROM emails
    WHERE queue = $1
      AND status IN ('queued', 'sending')
      AND next_attempt_at <= $2
      AND (locked_until IS NULL OR locked_until <= $2)
    ORDER BY next_attempt_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE emails e
SET status = 'sending', locked_until = $4, attempts = e.attempts + 1
WHERE e.id = ANY(ARRAY(SELECT id FROM due))
RETURNING e.id, e.kind, e.account_id, e.to_address, e.template, e.subject, e.context,
          e.digest_id, e.newsletter_id, e.attempts, e.message_id

-- name: release_unsent
-- A stopped batch hands back the rows it never started (still held under its lease): due again at
-- once for any worker, and the claim that never sent them does not count as an attempt.
UPDATE emails
SET status = 'queued', locked_until = NULL, attempts = greatest(attempts - 1, 0)
WHERE id = ANY($1::bigint[]) AND status = 'sending' AND locked_until = $2

-- name: record_results
-- One statement per group of results (a batch records several as its answers arrive): new states
-- (only for rows still held under this lease) and their events.
-- A service e-mail without an account (the notice that an account was erased) keeps no address,
-- subject, data or idempotency key once it is done, sent, suppressed or failed alike: the member
-- asked to be forgotten (issue 17). Error texts come here without addresses (smtp_reply.redact).
-- The statement turns `synchronous_commit` off for its own transaction (set_config(..., true)):
-- the commit does not wait for the WAL flush (see `Delivery._record`).
WITH r AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                         $6::text[], $7::jsonb[])
        AS r(id, status, message_id, error, next_attempt_at, event, detail)
    WHERE (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
), done AS (
    UPDATE emails e
    SET status = r.status,
        message_id = coalesce(r.message_id, e.message_id),
        last_error = r.error,
        next_attempt_at = coalesce(r.next_attempt_at, e.next_attempt_at),
        locked_until = NULL,
        sent_at = CASE WHEN r.status = 'sent' THEN $8 ELSE e.sent_at END,
        failed_at = CASE WHEN r.status = 'failed' THEN $8::timestamptz END,
        to_address = CASE WHEN e.account_id IS NULL AND e.kind = 'service' AND r.status IN ('sent', 'suppressed', 'failed')
                          THEN '[erased]' ELSE e.to_address END,
        subject = CASE WHEN e.account_id IS NULL AND e.kind = 'service' AND r.status IN ('sent', 'suppressed', 'failed')
                       THEN NULL ELSE e.subject END,
        context = CASE WHEN e.account_id IS NULL AND e.kind = 'service' AND r.status IN ('sent', 'suppressed', 'failed')
                       THEN '{}'::jsonb ELSE e.context END,
        idempotency_key = CASE WHEN e.account_id IS NULL AND e.kind = 'service' AND r.status IN ('sent', 'suppressed', 'failed')
                               THEN NULL ELSE e.idempotency_key END
    FROM r
    -- `e.id = ANY($1)` as well as the join: the rows are found by primary key, never by reading
    -- the whole table (which the planner chose for a group of 300 at 10,000 rows; see claim_emails).
    -- `coalesce(e.status, '')` (status is never NULL) so that the planner cannot prove the partial
    -- index of due rows (`emails_due_idx`, status queued or sending) usable: with statistics from
    -- before a newsletter's fan-out it thought that index small and ANDed it, read in full (every
    -- row still to send), with the few keys, for each group: 1.8 of 2.5 ms for 24 results at
    -- 100,000 rows due (docs/benchmarks.md, "The database's floor").
    WHERE e.id = ANY($1::bigint[]) AND e.id = r.id AND coalesce(e.status, '') = 'sending'
      AND e.locked_until = $9
    RETURNING e.id, e.account_id, e.newsletter_id
)
INSERT INTO events (kind, account_id, email_id, newsletter_id, detail, dedupe_key, created_at)
SELECT r.event, done.account_id, done.id, done.newsletter_id, r.detail,
       r.event || ':' || done.id || ':' || $10::text, $8
FROM done JOIN r ON r.id = done.id
ON CONFLICT (dedupe_key) DO NOTHING

-- name: due_by_queue
-- Due rows per queue; `expired` counts rows whose lease ran out (their worker died).
SELECT queue, count(*) AS due, count(*) FILTER (WHERE status = 'sending') AS expired
FROM emails
WHERE status IN ('queued', 'sending')
  AND next_attempt_at <= $1
  AND (locked_until IS NULL OR locked_until <= $1)
GROUP BY queue

-- name: retry_failed_ids
UPDATE emails
SET status = 'queued', attempts = 0, next_attempt_at = $2, last_error = NULL, failed_at = NULL,
    locked_until = NULL
WHERE id = ANY($1::bigint[]) AND status = 'failed' AND to_address <> '[erased]'
RETURNING id, queue

-- name: retry_failed_since
UPDATE emails
SET status = 'queued', attempts = 0, next_attempt_at = $2, last_error = NULL, failed_at = NULL,
    locked_until = NULL
WHERE status = 'failed' AND failed_at >= $1 AND to_address <> '[erased]'
RETURNING id, queue

-- name: add_suppression
INSERT INTO suppressions (address_hash, list, reason, detail)
VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING

-- name: add_suppressions
INSERT INTO suppressions (address_hash, list, reason, detail)
SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[])
ON CONFLICT DO NOTHING

-- name: remove_suppression
DELETE FROM suppressions WHERE address_hash = $1 AND list = $2

-- name: lookup_suppressions
SELECT address_hash, list, reason FROM suppressions WHERE address_hash = ANY($1::bytea[])

-- name: service_account
SELECT id, external_id, email, name, locale FROM accounts WHERE external_id = $1

-- name: service_email
SELECT id, status, template, attempts, next_attempt_at, last_error, message_id, created_at, sent_at
FROM emails WHERE id = $1 AND kind = 'service'

-- name: release_digest_messages
-- The messages of digests whose e-mail failed for good were never delivered: they are pending
-- again (for the next digest, and unread in the inbox), not marked as digested.
-- The digests list no messages any more (a message is in one digest at most), and those still
-- unread and unarchived are queued again.
WITH released AS (
    SELECT d.id, d.account_id, d.message_ids FROM digests d
    WHERE d.id = ANY($1::bigint[])
    FOR NO KEY UPDATE
),
cleared AS (
    UPDATE digests d SET message_ids = '{}' FROM released r WHERE d.id = r.id
)
INSERT INTO pending_messages (account_id, message_id, created_at, category)
SELECT r.account_id, m.id, m.created_at, m.category
FROM released r
CROSS JOIN LATERAL unnest(r.message_ids) AS i (id)
CROSS JOIN LATERAL (  -- per id by primary key (LIMIT keeps it so)
    SELECT x.id, x.created_at, x.category FROM messages x
    WHERE x.id = i.id AND messages_by_id(x.created_at, i.id) AND x.account_id = r.account_id
      AND x.read_at IS NULL AND x.archived_at IS NULL
    LIMIT 1
) m
ON CONFLICT DO NOTHING
