-- Newsletters sent at each member's local time: rows wait (`status = 'waiting'`) until their
-- `due_at` (set by `fan_out_newsletter`), then a release pass queues them for the outbox.
-- See notifier/newsletter_local_time.py.

-- name: release_due_emails
-- Up to $2 waiting rows due at $1 become queued (due for the outbox now). Rows another pass holds
-- are skipped and the status is checked again under the lock: each row is released once.
WITH due AS (
    SELECT id FROM emails
    WHERE status = 'waiting' AND due_at <= $1
    ORDER BY due_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE emails e
SET status = 'queued', next_attempt_at = now()
FROM due
WHERE e.id = due.id AND e.status = 'waiting'
RETURNING e.newsletter_id;

-- name: count_due_emails
-- What a release pass at $1 would release (the dry run).
SELECT count(*) FROM emails WHERE status = 'waiting' AND due_at <= $1;

-- name: newsletter_next_due
-- How many of a newsletter's recipients still wait for their local time, and the next due time.
SELECT count(*) AS waiting, min(due_at) AS next_due_at
FROM emails
WHERE newsletter_id = $1 AND kind = 'newsletter' AND status = 'waiting';
