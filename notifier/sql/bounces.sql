-- The deliverability loop: reports and provider events tied to outbox rows. See notifier/bounces.py.

-- name: report_email
SELECT id, kind, account_id, newsletter_id, to_address FROM emails WHERE id = $1

-- name: insert_report_event
-- Append-only; the same report (or provider event) twice is recorded once.
INSERT INTO events (kind, account_id, email_id, newsletter_id, method, detail, dedupe_key)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (dedupe_key) DO NOTHING
RETURNING id

-- name: count_soft_bounces
-- Temporary failures of one address (by hash) since a time: the soft-bounce rule.
SELECT count(*) FROM events
WHERE kind = 'bounced' AND detail->>'type' = 'soft' AND detail->>'recipient_hash' = $1 AND created_at >= $2

-- name: account_by_address
SELECT id FROM accounts WHERE lower(email) = lower($1) ORDER BY id LIMIT 1
