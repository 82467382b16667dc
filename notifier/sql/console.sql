-- The web console: sessions, and what its pages read. See notifier/console*.py.

-- name: console_key_by_hash
SELECT id, name, scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL;

-- name: console_purge_sessions
-- Sessions past their absolute end or idle longer than $1 minutes.
DELETE FROM console_sessions
WHERE expires_at < now() OR last_seen_at < now() - make_interval(mins => $1);

-- name: console_insert_session
INSERT INTO console_sessions (id_hash, user_id, api_key_id, role, method, csrf_token, expires_at, user_agent)
VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7), $8);

-- name: console_touch_session
-- A live session: within its absolute end, used within the last $2 minutes, of a user who is not
-- disabled or of a key that is not revoked.
WITH live AS (
    SELECT s.id_hash, coalesce(u.name, k.name) AS name, u.email
    FROM console_sessions s
    LEFT JOIN console_users u ON u.id = s.user_id AND u.status <> 'disabled'
    LEFT JOIN api_keys k ON k.id = s.api_key_id AND k.revoked_at IS NULL
    WHERE s.id_hash = $1 AND s.expires_at > now() AND s.last_seen_at > now() - make_interval(mins => $2)
      AND (u.id IS NOT NULL OR k.id IS NOT NULL)
)
UPDATE console_sessions s SET last_seen_at = now()
FROM live WHERE s.id_hash = live.id_hash
RETURNING s.id_hash, s.user_id, s.api_key_id, live.name, live.email, s.role, s.method, s.csrf_token,
          s.signed_in_at, s.expires_at;

-- name: console_user_sessions
SELECT id_hash, method, user_agent, created_at, signed_in_at, last_seen_at, expires_at
FROM console_sessions WHERE user_id = $1 AND expires_at > now() ORDER BY last_seen_at DESC;

-- name: console_key_sessions
SELECT id_hash, method, user_agent, created_at, signed_in_at, last_seen_at, expires_at
FROM console_sessions WHERE api_key_id = $1 AND expires_at > now() ORDER BY last_seen_at DESC;

-- name: console_delete_session
DELETE FROM console_sessions WHERE id_hash = $1;

-- name: console_delete_user_sessions
WITH gone AS (DELETE FROM console_sessions WHERE user_id = $1 RETURNING 1) SELECT count(*) FROM gone;

-- name: console_delete_key_sessions
WITH gone AS (DELETE FROM console_sessions WHERE api_key_id = $1 RETURNING 1) SELECT count(*) FROM gone;

-- name: console_find_members
-- Exact external id or e-mail address, else e-mail addresses starting with $2 (a LIKE pattern).
SELECT id, external_id, email, name, newsletter, digest_frequency, created_at
FROM accounts
WHERE external_id = $1 OR lower(email) = lower($1) OR lower(email) LIKE $2
ORDER BY (external_id = $1 OR lower(email) = lower($1)) DESC, lower(email), id
LIMIT $3;

-- name: console_account_consents
SELECT coalesce(l.key, c.topic) AS topic, c.granted, c.source, c.wording, c.wording_version,
       c.confirmed_at, c.created_at
FROM consents c LEFT JOIN lists l ON l.id = c.list_id
WHERE c.account_id = $1 ORDER BY c.id DESC LIMIT $2;

-- name: console_account_inbox_counts
SELECT count(*) AS total,
       count(*) FILTER (WHERE read_at IS NULL AND archived_at IS NULL) AS unread,
       count(*) FILTER (WHERE read_at IS NULL AND archived_at IS NULL AND EXISTS (
           SELECT 1 FROM pending_messages q WHERE q.account_id = $1 AND q.message_id = m.id)) AS pending
FROM messages m WHERE m.account_id = $1;

-- name: console_account_inbox
SELECT m.id, m.category, m.subject, m.url, m.created_at, m.read_at, m.archived_at, md.digest_id
FROM messages m
LEFT JOIN message_digests md ON md.account_id = $1 AND md.message_id = m.id
WHERE m.account_id = $1 ORDER BY m.id DESC LIMIT $2;

-- name: console_account_emails
SELECT id, kind, queue, to_address, template, subject, status, attempts, last_error, created_at, sent_at,
       newsletter_id
FROM emails WHERE account_id = $1 ORDER BY id DESC LIMIT $2;

-- name: console_account_events
SELECT id, kind, method, email_id, newsletter_id, detail, created_at
FROM events WHERE account_id = $1 ORDER BY id DESC LIMIT $2;

-- name: console_account_audit
-- With the name of the console user who acted, when a person did.
SELECT a.id, a.actor_type, a.actor, a.action, a.changes, a.created_at, u.name AS person
FROM audit_log a LEFT JOIN console_users u ON u.id = a.console_user_id
WHERE a.account_id = $1 ORDER BY a.id DESC LIMIT $2;

-- name: console_newsletter_audit
-- Who did what to a newsletter in the console, newest first, with the person's name.
SELECT a.actor_type, a.actor, a.action, a.changes, a.created_at, u.name AS person
FROM audit_log a LEFT JOIN console_users u ON u.id = a.console_user_id
WHERE a.account_id IS NULL AND a.action LIKE 'newsletter.%' AND a.changes->>'newsletter_id' = ($1::bigint)::text
ORDER BY a.id DESC LIMIT $2;

-- name: console_suppressions_for
SELECT address_hash, list, reason, detail, created_at FROM suppressions WHERE address_hash = $1 ORDER BY list;

-- name: console_recent_suppressions
SELECT address_hash, list, reason, detail, created_at FROM suppressions ORDER BY created_at DESC LIMIT $1;

-- name: console_suppression_counts
SELECT reason, count(*) AS n FROM suppressions GROUP BY reason ORDER BY reason;

-- name: console_remove_suppression
DELETE FROM suppressions WHERE address_hash = $1 AND list = $2 RETURNING reason;

-- name: console_accounts_with_hash
-- Accounts with this normalised address (see notifier.suppression.normalise).
SELECT id FROM accounts WHERE lower(email) = $1 ORDER BY id;

-- name: console_insert_event
INSERT INTO events (kind, account_id, method, detail) VALUES ($1, $2, 'console', $3);

-- name: console_failed_emails
SELECT id, kind, queue, account_id, to_address, template, subject, attempts, last_error, created_at, failed_at,
       newsletter_id
FROM emails WHERE status = 'failed'
ORDER BY failed_at DESC NULLS LAST, id DESC
LIMIT $1;

-- name: console_policy_rejections
-- E-mails the receiving servers refused by policy (5.7.x: the sender's authentication, DMARC,
-- reputation) in the last 24 hours: how many, and the newest few (see delivery.POLICY_PREFIX).
SELECT id, kind, last_error, failed_at, count(*) OVER () AS total
FROM emails
WHERE status = 'failed' AND failed_at > now() - interval '1 day' AND starts_with(last_error, $1)
ORDER BY failed_at DESC, id DESC
LIMIT $2;

-- name: console_failed_count
SELECT count(*) FROM emails WHERE status = 'failed';

-- name: console_send_rate
SELECT count(*) FILTER (WHERE sent_at > now() - interval '1 minute') AS last_minute,
       count(*) FILTER (WHERE sent_at > now() - interval '1 hour') AS last_hour,
       count(*) AS last_day
FROM emails WHERE status = 'sent' AND sent_at > now() - interval '1 day';

-- name: console_failure_rate
SELECT count(*) FILTER (WHERE failed_at > now() - interval '1 hour') AS last_hour,
       count(*) AS last_day
FROM emails WHERE status = 'failed' AND failed_at > now() - interval '1 day';

-- name: console_queue_depths
SELECT queue,
       count(*) FILTER (WHERE status = 'queued') AS queued,
       count(*) FILTER (WHERE status = 'queued' AND next_attempt_at <= now()) AS due,
       count(*) FILTER (WHERE status = 'sending') AS sending,
       min(next_attempt_at) FILTER (WHERE status = 'queued') AS oldest_due
FROM emails WHERE status IN ('queued', 'sending')
GROUP BY queue ORDER BY queue;

-- name: console_newsletters
-- Newest first, with delivery figures from the outbox rows and unsubscribes from the events
-- (plus what erased members counted).
SELECT n.id, n.subject, n.status, n.scheduled_at, n.started_at, n.finished_at, n.recipients, n.created_by,
       n.created_at, n.updated_at,
       coalesce(f.sent, 0) + x.sent AS sent, coalesce(f.failed, 0) + x.failed AS failed,
       coalesce(f.pending, 0) AS pending, coalesce(u.unsubscribed, 0) + x.unsubscribed AS unsubscribed
FROM newsletters n
CROSS JOIN LATERAL (  -- what erased members counted (newsletter_erased_figures)
    SELECT coalesce(sum(k.count) FILTER (WHERE k.figure = 'sent'), 0) AS sent,
           coalesce(sum(k.count) FILTER (WHERE k.figure = 'failed'), 0) AS failed,
           coalesce(sum(k.count) FILTER (WHERE k.figure = 'unsubscribed'), 0) AS unsubscribed
    FROM newsletter_erased_figures k WHERE k.newsletter_id = n.id
) x
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE e.status = 'sent') AS sent,
           count(*) FILTER (WHERE e.status = 'failed') AS failed,
           count(*) FILTER (WHERE e.status IN ('waiting', 'queued', 'sending')) AS pending
    FROM emails e WHERE e.newsletter_id = n.id AND e.kind = 'newsletter'
) f ON n.status IN ('sending', 'sent', 'cancelled')
LEFT JOIN LATERAL (
    SELECT count(DISTINCT ev.account_id) AS unsubscribed
    FROM events ev WHERE ev.newsletter_id = n.id AND ev.kind = 'unsubscribed'
) u ON n.status IN ('sending', 'sent', 'cancelled')
ORDER BY n.id DESC
LIMIT $1;

-- name: console_newsletter_timeline
-- Events of a newsletter's members per time bucket ($2 wide, from $3) and kind; test-sends have
-- no account and do not count.
SELECT date_bin($2::interval, created_at, $3::timestamptz) AS bucket, kind, count(*) AS n
FROM events
WHERE newsletter_id = $1 AND kind = ANY($4::text[]) AND account_id IS NOT NULL
GROUP BY 1, 2 ORDER BY 1, 2;

-- name: console_newsletter_event_span
SELECT min(created_at) AS first, max(created_at) AS last
FROM events WHERE newsletter_id = $1 AND account_id IS NOT NULL;
