-- name: insert_account
-- No row when the external_id is taken.
INSERT INTO accounts (external_id, email, name, timezone, locale)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (external_id) DO NOTHING
RETURNING *;

-- name: get_account
SELECT * FROM accounts WHERE external_id = $1;

-- name: get_account_id
SELECT id FROM accounts WHERE external_id = $1;

-- name: get_account_by_id
SELECT * FROM accounts WHERE id = $1;

-- name: lock_account
SELECT * FROM accounts WHERE external_id = $1 FOR UPDATE;

-- name: update_account
UPDATE accounts SET email = $2, name = $3, timezone = $4, locale = $5, updated_at = now()
WHERE id = $1
RETURNING *;

-- name: delete_account
-- Cascades to messages, digests, consents, emails, events, audit rows and idempotency records.
DELETE FROM accounts WHERE id = $1;

-- name: delete_unowned_email_events
-- The events of the outbox rows `delete_unowned_emails_to` deletes (they have no account to
-- cascade from, and a failure's detail is about that address).
DELETE FROM events
WHERE email_id IN (
    SELECT id FROM emails
    WHERE account_id IS NULL AND lower(to_address) = lower($1)
      AND NOT (kind = 'service' AND status IN ('queued', 'sending'))
);

-- name: delete_unowned_emails_to
-- Outbox rows without an account (test sends, notices done with) addressed to the erased address.
-- A service e-mail still waiting to go stays: the notice that the account was erased is sent
-- detached from the account, and erasing must not cancel it; once it is sent, suppressed or
-- failed, `record_results` keeps nothing personal of it.
DELETE FROM emails
WHERE account_id IS NULL AND lower(to_address) = lower($1)
  AND NOT (kind = 'service' AND status IN ('queued', 'sending'));

-- name: scrub_suppression_detail
-- A suppression stays (as a hash) but its free-text detail may quote the address.
UPDATE suppressions SET detail = NULL
WHERE address_hash = $1 AND detail IS NOT NULL;

-- name: insert_erasure
INSERT INTO erasures (reason, actor_type, actor) VALUES ($1, $2, $3)
RETURNING id, reason, created_at;

-- name: account_audit_page
SELECT id, actor_type, actor, action, changes, created_at
FROM audit_log
WHERE account_id = $1 AND ($2::bigint IS NULL OR id < $2)
ORDER BY id DESC
LIMIT $3;

-- name: export_consents
-- `list`: the key of the list the consent is for.
SELECT c.id, c.topic, l.key AS list, c.granted, c.source, c.wording, c.wording_version,
       c.confirmed_at, c.created_at
FROM consents c LEFT JOIN lists l ON l.id = c.list_id
WHERE c.account_id = $1 ORDER BY c.id;

-- name: export_messages
SELECT m.id, m.category, m.subject, m.body, m.url, m.data, m.created_at, m.read_at, m.archived_at,
       md.digest_id
FROM messages m
LEFT JOIN message_digests md ON md.account_id = $1 AND md.message_id = m.id
WHERE m.account_id = $1 ORDER BY m.id;

-- name: export_digests
SELECT id, frequency, window_start, window_end, message_count, created_at
FROM digests WHERE account_id = $1 ORDER BY id;

-- name: export_emails
SELECT id, kind, to_address, template, subject, context, digest_id, newsletter_id, status, attempts,
       last_error, message_id, created_at, sent_at
FROM emails WHERE account_id = $1 ORDER BY id;

-- name: export_events
SELECT id, kind, email_id, newsletter_id, method, detail, created_at
FROM events WHERE account_id = $1 ORDER BY id;

-- name: export_audit
SELECT id, actor_type, actor, action, changes, created_at
FROM audit_log WHERE account_id = $1 ORDER BY id;

-- name: export_suppressions
SELECT list, reason, created_at FROM suppressions WHERE address_hash = $1 ORDER BY list;

-- name: unsubscribed_lists
-- The lists the member ever left through an unsubscribe (`unsubscribed` events name them).
SELECT coalesce(array_agg(DISTINCT detail->>'list'), '{}')::text[]
FROM events
WHERE account_id = $1 AND kind = 'unsubscribed' AND detail ? 'list';
