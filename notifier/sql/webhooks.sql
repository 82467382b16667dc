-- Webhooks out (notifier.webhooks): endpoints, the fan-out from the append-only sources into
-- `webhook_deliveries`, and the delivery outbox's claim and record.

-- name: webhook_insert_endpoint
INSERT INTO webhook_endpoints (url, description, events, secret, created_by)
VALUES ($1, $2, $3, $4, $5)
RETURNING id, url, description, events, status, disabled_reason, failing_since, created_at, updated_at

-- name: webhook_get_endpoint
SELECT id, url, description, events, status, disabled_reason, failing_since, created_at, updated_at
FROM webhook_endpoints WHERE id = $1

-- name: webhook_list_endpoints
-- Newest first, below the cursor's id ($1, NULL for the first page).
SELECT id, url, description, events, status, disabled_reason, failing_since, created_at, updated_at
FROM webhook_endpoints
WHERE ($1::bigint IS NULL OR id < $1)
ORDER BY id DESC
LIMIT $2

-- name: webhook_update_endpoint
-- Fields left NULL keep their value; enabling again clears the failure streak.
UPDATE webhook_endpoints
SET url = coalesce($2, url),
    description = coalesce($3, description),
    events = coalesce($4, events),
    status = coalesce($5, status),
    disabled_reason = CASE WHEN $5 IS NULL THEN disabled_reason
                           WHEN $5 = 'enabled' THEN NULL ELSE 'disabled by an operator' END,
    failing_since = CASE WHEN $5 = 'enabled' THEN NULL ELSE failing_since END,
    updated_at = now()
WHERE id = $1
RETURNING id, url, description, events, status, disabled_reason, failing_since, created_at, updated_at

-- name: webhook_delete_endpoint
DELETE FROM webhook_endpoints WHERE id = $1 RETURNING id

-- name: webhook_list_deliveries
-- An endpoint's deliveries, newest first, below the cursor's id ($2).
SELECT id, event_type, payload, status, attempts, next_attempt_at, last_status, last_error,
       occurred_at, created_at, delivered_at
FROM webhook_deliveries
WHERE endpoint_id = $1 AND ($2::bigint IS NULL OR id < $2)
ORDER BY id DESC
LIMIT $3

-- name: webhook_redeliver
-- Deliver again, at once, whatever its state (the receiver lost it, or it failed for good).
UPDATE webhook_deliveries
SET status = 'pending', attempts = 0, next_attempt_at = $3, locked_until = NULL, last_error = NULL,
    delivered_at = NULL
WHERE id = $2 AND endpoint_id = $1
RETURNING id, event_type, payload, status, attempts, next_attempt_at, last_status, last_error,
          occurred_at, created_at, delivered_at

-- name: webhook_cursor_for_update
SELECT txid, last_id FROM webhook_cursors WHERE source = $1 FOR UPDATE

-- name: webhook_cursor_set
INSERT INTO webhook_cursors (source, txid, last_id) VALUES ($1, $2, $3)
ON CONFLICT (source) DO UPDATE SET txid = excluded.txid, last_id = excluded.last_id

-- name: webhook_events_batch
-- The next rows of `events` after the cursor ($1, $2) whose writing transactions have all ended
-- (below the snapshot's xmin, so no row can still appear before them), in commit-safe order.
SELECT txid, id FROM events
WHERE txid IS NOT NULL AND txid < pg_snapshot_xmin(pg_current_snapshot())
  AND (txid > $1 OR (txid = $1 AND id > $2))
ORDER BY txid, id
LIMIT $3

-- name: webhook_audit_batch
SELECT txid, id FROM audit_log
WHERE txid IS NOT NULL AND txid < pg_snapshot_xmin(pg_current_snapshot())
  AND (txid > $1 OR (txid = $1 AND id > $2))
ORDER BY txid, id
LIMIT $3

-- name: webhook_erasures_batch
SELECT txid, id FROM erasures
WHERE txid IS NOT NULL AND txid < pg_snapshot_xmin(pg_current_snapshot())
  AND (txid > $1 OR (txid = $1 AND id > $2))
ORDER BY txid, id
LIMIT $3

-- name: webhook_fanout_events
-- Deliveries for the `events` rows from after ($1, $2) up to ($3, $4), to every enabled endpoint
-- that subscribes to the row's type and existed when it happened. Idempotent (the unique key).
-- The payload names the member by external_id only; a bounce's reason is the server's answer.
INSERT INTO webhook_deliveries (endpoint_id, account_id, source, source_id, event_type, payload, occurred_at,
                                next_attempt_at)
SELECT ep.id, ev.account_id, 'event', ev.id, t.type,
       jsonb_build_object(
           'type', t.type,
           'timestamp', ev.created_at,
           'data', jsonb_strip_nulls(CASE WHEN t.type LIKE 'email.%' THEN jsonb_build_object(
               'email_id', ev.email_id,
               'account', a.external_id,
               'kind', e.kind,
               'newsletter_id', ev.newsletter_id,
               'reason', coalesce(ev.detail ->> 'error', ev.detail ->> 'reason'))
           ELSE jsonb_build_object(
               'account', a.external_id,
               'list', ev.detail ->> 'list',
               'method', ev.method,
               'email_id', ev.email_id,
               'newsletter_id', ev.newsletter_id)
           END)),
       ev.created_at, ev.created_at
FROM events ev
JOIN (VALUES ('sent', 'email.sent'), ('bounced', 'email.bounced'), ('complained', 'email.complained'),
             ('failed', 'email.failed'), ('unsubscribed', 'member.unsubscribed'),
             ('resubscribed', 'member.resubscribed')) AS t(kind, type) ON t.kind = ev.kind
LEFT JOIN accounts a ON a.id = ev.account_id
LEFT JOIN emails e ON e.id = ev.email_id
JOIN webhook_endpoints ep ON ep.status = 'enabled' AND t.type = ANY (ep.events) AND ep.created_at <= ev.created_at
WHERE ev.txid IS NOT NULL
  AND (ev.txid > $1 OR (ev.txid = $1 AND ev.id > $2))
  AND (ev.txid < $3 OR (ev.txid = $3 AND ev.id <= $4))
ORDER BY ev.txid, ev.id, ep.id
ON CONFLICT (endpoint_id, source, source_id) DO NOTHING

-- name: webhook_fanout_audit
-- `member.preferences_changed` from the audit trail (API, preference centre and console alike):
-- which fields changed and their new values, never the values they had.
INSERT INTO webhook_deliveries (endpoint_id, account_id, source, source_id, event_type, payload, occurred_at,
                                next_attempt_at)
SELECT ep.id, al.account_id, 'audit', al.id, 'member.preferences_changed',
       jsonb_build_object(
           'type', 'member.preferences_changed',
           'timestamp', al.created_at,
           'data', jsonb_build_object(
               'account', a.external_id,
               'source', al.changes ->> 'source',
               'changes', coalesce((SELECT jsonb_object_agg(k, v -> 'after') FROM jsonb_each(al.changes) AS c(k, v)
                                    WHERE jsonb_typeof(v) = 'object' AND v ? 'after'), '{}'::jsonb))),
       al.created_at, al.created_at
FROM audit_log al
JOIN accounts a ON a.id = al.account_id
JOIN webhook_endpoints ep ON ep.status = 'enabled' AND 'member.preferences_changed' = ANY (ep.events)
                          AND ep.created_at <= al.created_at
WHERE al.action = 'preferences.update' AND al.txid IS NOT NULL
  AND (al.txid > $1 OR (al.txid = $1 AND al.id > $2))
  AND (al.txid < $3 OR (al.txid = $3 AND al.id <= $4))
ORDER BY al.txid, al.id, ep.id
ON CONFLICT (endpoint_id, source, source_id) DO NOTHING

-- name: webhook_fanout_erasures
-- `account.erased` carries no personal data: the erasure's id, reason and time only.
INSERT INTO webhook_deliveries (endpoint_id, account_id, source, source_id, event_type, payload, occurred_at,
                                next_attempt_at)
SELECT ep.id, NULL, 'erasure', er.id, 'account.erased',
       jsonb_build_object('type', 'account.erased', 'timestamp', er.created_at,
                          'data', jsonb_build_object('erasure_id', er.id, 'reason', er.reason)),
       er.created_at, er.created_at
FROM erasures er
JOIN webhook_endpoints ep ON ep.status = 'enabled' AND 'account.erased' = ANY (ep.events)
                          AND ep.created_at <= er.created_at
WHERE er.txid IS NOT NULL
  AND (er.txid > $1 OR (er.txid = $1 AND er.id > $2))
  AND (er.txid < $3 OR (er.txid = $3 AND er.id <= $4))
ORDER BY er.txid, er.id, ep.id
ON CONFLICT (endpoint_id, source, source_id) DO NOTHING

-- name: webhook_fanout_newsletters
-- `newsletter.sent` for newsletters that finished in the last day ($1 = now); newsletters are
-- few, and the unique key makes the pass idempotent, so no cursor is needed.
INSERT INTO webhook_deliveries (endpoint_id, account_id, source, source_id, event_type, payload, occurred_at,
                                next_attempt_at)
SELECT ep.id, NULL, 'newsletter', n.id, 'newsletter.sent',
       jsonb_build_object('type', 'newsletter.sent', 'timestamp', n.finished_at,
                          'data', jsonb_build_object('newsletter_id', n.id, 'subject', n.subject,
                                                     'started_at', n.started_at, 'finished_at', n.finished_at)),
       n.finished_at, n.finished_at
FROM newsletters n
JOIN webhook_endpoints ep ON ep.status = 'enabled' AND 'newsletter.sent' = ANY (ep.events)
                          AND ep.created_at <= n.finished_at
WHERE n.status = 'sent' AND n.finished_at >= $1::timestamptz - interval '1 day'
ON CONFLICT (endpoint_id, source, source_id) DO NOTHING

-- name: webhook_claim
-- Due deliveries to enabled endpoints, each the earliest unfinished one (by when it happened) of
-- its (endpoint, member) so a member's events arrive in order, whichever source they came from; held under a lease ($3) so a dead worker's rows come back.
WITH due AS (
    SELECT d.id FROM webhook_deliveries d
    JOIN webhook_endpoints ep ON ep.id = d.endpoint_id AND ep.status = 'enabled'
    WHERE d.status = 'pending' AND d.next_attempt_at <= $1
      AND (d.locked_until IS NULL OR d.locked_until <= $1)
      AND (d.account_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM webhook_deliveries p
          WHERE p.endpoint_id = d.endpoint_id AND p.account_id = d.account_id
            AND p.status = 'pending' AND p.id < d.id))
    ORDER BY d.next_attempt_at, d.id
    LIMIT $2
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries d
SET locked_until = $3, attempts = d.attempts + 1
FROM due, webhook_endpoints ep
WHERE d.id = due.id AND ep.id = d.endpoint_id
RETURNING d.id, d.endpoint_id, d.event_type, d.payload, d.attempts, d.locked_until, ep.url, ep.secret

-- name: webhook_record_delivered
-- A round's successes ($1 ids, $2 HTTP statuses), only for rows still held under its lease ($3).
UPDATE webhook_deliveries d
SET status = 'delivered', delivered_at = $4, locked_until = NULL, last_status = r.status, last_error = NULL
FROM unnest($1::bigint[], $2::smallint[]) AS r(id, status)
WHERE d.id = r.id AND d.locked_until = $3

-- name: webhook_record_retry
UPDATE webhook_deliveries
SET next_attempt_at = $3, locked_until = NULL, last_status = $4, last_error = $5
WHERE id = $1 AND locked_until = $2

-- name: webhook_record_failed
UPDATE webhook_deliveries
SET status = 'failed', locked_until = NULL, last_status = $3, last_error = $4
WHERE id = $1 AND locked_until = $2

-- name: webhook_endpoint_succeeded
UPDATE webhook_endpoints SET failing_since = NULL WHERE id = ANY ($1::bigint[]) AND failing_since IS NOT NULL

-- name: webhook_endpoint_failed
-- A failed attempt starts the endpoint's failure streak (kept from its first failure).
UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, $2) WHERE id = $1
RETURNING failing_since

-- name: webhook_endpoint_disable
UPDATE webhook_endpoints
SET status = 'disabled', disabled_reason = $2, updated_at = $3
WHERE id = $1 AND status = 'enabled'

-- name: webhook_console_endpoints
-- The console's list: each endpoint with its deliveries of the last day by outcome.
SELECT ep.id, ep.url, ep.description, ep.status, ep.disabled_reason, ep.failing_since, ep.events,
       count(d.id) FILTER (WHERE d.status = 'delivered' AND d.delivered_at >= $1) AS delivered,
       count(d.id) FILTER (WHERE d.status = 'pending') AS pending,
       count(d.id) FILTER (WHERE d.status = 'pending' AND d.attempts > 0) AS retrying,
       count(d.id) FILTER (WHERE d.status = 'failed') AS failed
FROM webhook_endpoints ep
LEFT JOIN webhook_deliveries d ON d.endpoint_id = ep.id
GROUP BY ep.id
ORDER BY ep.id

-- name: webhook_console_recent
-- The latest deliveries of every endpoint ($1 per endpoint).
SELECT r.* FROM webhook_endpoints ep
CROSS JOIN LATERAL (
    SELECT d.id, d.endpoint_id, d.event_type, d.status, d.attempts, d.last_status, d.last_error,
           d.occurred_at, d.delivered_at
    FROM webhook_deliveries d WHERE d.endpoint_id = ep.id ORDER BY d.id DESC LIMIT $1
) r
ORDER BY r.endpoint_id, r.id DESC
