-- Newsletters: drafts, the status machine, the frozen audience (fan-out) and the figures.

-- name: insert_newsletter
-- A draft to the default list (benches and the chaos stage use this one); $6: count clicks.
INSERT INTO newsletters (subject, preheader, body, body_format, created_by, updated_by, track_clicks)
VALUES ($1, $2, $3, $4, $5, $5, $6)
RETURNING *;

-- name: insert_targeted_newsletter
-- A draft to lists $6 (keys; empty: the default list) and segment $7 or saved segment $8; $9:
-- count clicks.
INSERT INTO newsletters (subject, preheader, body, body_format, created_by, updated_by,
                         lists, segment, segment_key, track_clicks)
VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $9)
RETURNING *;

-- name: update_newsletter_draft
-- Only a draft can be edited; a scheduled one goes back to draft by cancelling its schedule.
UPDATE newsletters
SET subject = $2, preheader = $3, body = $4, body_format = $5, updated_by = $6, updated_at = now(),
    track_clicks = $7,
    approved_by = NULL, approved_at = NULL  -- an approval is of what was read: an edit needs a new one
WHERE id = $1 AND status = 'draft'
RETURNING *;

-- name: target_newsletter
-- A draft's audience: lists (keys; empty: the default list) and an inline or saved segment.
UPDATE newsletters
SET lists = $2, segment = $3, segment_key = $4, updated_by = $5, updated_at = now()
WHERE id = $1 AND status = 'draft'
RETURNING *;

-- name: approve_newsletter
-- Four-eyes sending: a second person's approval of a draft or scheduled newsletter.
UPDATE newsletters SET approved_by = $2, approved_at = now()
WHERE id = $1 AND status IN ('draft', 'scheduled')
RETURNING *;

-- name: hold_newsletter
-- A newsletter that needed an approval it did not have goes back to draft instead of starting.
UPDATE newsletters
SET status = 'draft', scheduled_at = NULL, local_time = NULL, local_date = NULL, updated_at = now()
WHERE id = $1 AND status IN ('draft', 'scheduled');

-- name: get_newsletter
SELECT * FROM newsletters WHERE id = $1;

-- name: list_newsletters
-- Newest first, keyset-paginated by id; $2 NULL means all statuses.
SELECT * FROM newsletters
WHERE ($1::bigint IS NULL OR id < $1) AND ($2::text IS NULL OR status = $2)
ORDER BY id DESC
LIMIT $3;

-- name: schedule_newsletter
-- $4, $5: the local time and date of a send at each member's local time (both NULL otherwise).
UPDATE newsletters
SET status = 'scheduled', scheduled_at = $2, updated_by = $3, updated_at = now(),
    local_time = $4, local_date = $5
WHERE id = $1 AND status IN ('draft', 'scheduled')
RETURNING *;

-- name: unschedule_newsletter
UPDATE newsletters
SET status = 'draft', scheduled_at = NULL, local_time = NULL, local_date = NULL, updated_by = $2,
    updated_at = now()
WHERE id = $1 AND status = 'scheduled'
RETURNING *;

-- name: start_newsletter
-- The one conditional update that moves a newsletter to `sending`: of any number of workers
-- or requests, exactly one gets the row back and performs the fan-out.
UPDATE newsletters
SET status = 'sending', started_at = now(), updated_at = now()
WHERE id = $1 AND status IN ('draft', 'scheduled')
RETURNING *;

-- name: due_newsletters
SELECT id FROM newsletters
WHERE status = 'scheduled' AND scheduled_at <= $1
ORDER BY scheduled_at, id
LIMIT $2;

-- name: fan_out_newsletter
-- Freeze the audience into one outbox row per member, in one statement: notifier/audience.py
-- puts `audience_members` (lists $1, the segment from $7) in place of the empty stub between the
-- markers; $2 is the newsletter, $3 the queue. Each row's context names the list the member gets
-- it through (List-Id, one-click unsubscribe). Re-running adds nobody twice.
-- A send at each member's local time gives the due instant of every time zone ($4 zones, $5
-- instants, $6 for a zone not among them): each row then waits until its member's instant
-- (notifier.newsletter_local_time); with empty arrays and $6 NULL every row is queued now.
INSERT INTO emails (kind, queue, account_id, to_address, template, subject, context, newsletter_id,
                    status, due_at, next_attempt_at)
SELECT 'newsletter', $3::text, m.account_id, m.email, 'newsletter', n.subject,
       jsonb_build_object('name', m.name, 'list', m.list_key, 'list_id', m.list_id), n.id,
       CASE WHEN coalesce(z.due_at, $6::timestamptz) IS NULL THEN 'queued' ELSE 'waiting' END,
       coalesce(z.due_at, $6::timestamptz), coalesce(z.due_at, $6::timestamptz, now())
FROM newsletters n
CROSS JOIN (
    /*audience*/ SELECT NULL::bigint AS account_id, ''::text AS email, ''::text AS name,
           ''::text AS timezone, ''::text AS locale, NULL::bigint AS list_id, ''::text AS list_key
    WHERE $1::bigint[] IS NULL /*end*/
) m
LEFT JOIN unnest($4::text[], $5::timestamptz[]) AS z(timezone, due_at) ON z.timezone = m.timezone
WHERE n.id = $2
ORDER BY m.account_id
ON CONFLICT (newsletter_id, account_id) WHERE newsletter_id IS NOT NULL AND kind = 'newsletter'
DO NOTHING;

-- name: set_newsletter_recipients
UPDATE newsletters
SET recipients = (SELECT count(*) FROM emails WHERE newsletter_id = $1 AND kind = 'newsletter')
WHERE id = $1
RETURNING recipients;

-- name: sending_newsletters
SELECT id FROM newsletters WHERE status = 'sending' ORDER BY id;

-- name: finish_newsletter
-- `sent` only when no recipient row is still waiting (for its local time), queued or sending.
UPDATE newsletters
SET status = 'sent', finished_at = now(), updated_at = now()
WHERE id = $1 AND status = 'sending'
  AND NOT EXISTS (
        SELECT 1 FROM emails
        WHERE newsletter_id = $1 AND kind = 'newsletter' AND status IN ('waiting', 'queued', 'sending'))
RETURNING *;

-- name: fail_newsletter
-- A sending newsletter that does not render in the worker stops, with the reason.
UPDATE newsletters
SET status = 'failed', failure = $2, finished_at = now(), updated_at = now()
WHERE id = $1 AND status = 'sending'
RETURNING id;

-- name: cancel_newsletter
UPDATE newsletters
SET status = 'cancelled', cancelled_at = now(), updated_by = $2, updated_at = now()
WHERE id = $1 AND status IN ('draft', 'scheduled', 'sending')
RETURNING *;

-- name: cancel_newsletter_emails
-- Rows not yet handed to a worker (or still waiting for their local time) are cancelled; a row
-- being sent right now finishes.
UPDATE emails SET status = 'cancelled'
WHERE newsletter_id = $1 AND kind = 'newsletter' AND status IN ('waiting', 'queued');

-- name: newsletter_delivery_figures
SELECT count(*) AS recipients,
       count(*) FILTER (WHERE status = 'sent') AS sent,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'suppressed') AS suppressed,
       count(*) FILTER (WHERE status IN ('waiting', 'queued', 'sending')) AS pending,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       count(*) FILTER (WHERE status = 'waiting') AS waiting
FROM emails
WHERE newsletter_id = $1 AND kind = 'newsletter';

-- name: newsletter_event_figures
SELECT count(DISTINCT account_id) FILTER (WHERE kind IN ('bounced', 'hard_bounce')) AS bounced,
       count(DISTINCT account_id) FILTER (WHERE kind = 'complained') AS complained,
       count(DISTINCT account_id) FILTER (WHERE kind = 'unsubscribed') AS unsubscribed,
       count(DISTINCT account_id) FILTER (WHERE kind = 'resubscribed') AS resubscribed
FROM events
WHERE newsletter_id = $1;

-- name: keep_erased_newsletter_figures
-- What an erased member ($1) counts in each newsletter's figures, kept as numbers before their
-- rows go: one recipient, their row's status (a row still to send never goes: cancelled) and one
-- per kind of event, as `newsletter_event_figures` counts members.
WITH mine AS (
    SELECT newsletter_id,
           CASE WHEN status IN ('waiting', 'queued', 'sending') THEN 'cancelled' ELSE status END AS status
    FROM emails
    WHERE account_id = $1 AND kind = 'newsletter' AND newsletter_id IS NOT NULL
), counted AS (
    SELECT newsletter_id, 'recipients' AS figure FROM mine
    UNION ALL
    SELECT newsletter_id, status FROM mine
    UNION ALL
    SELECT DISTINCT newsletter_id, CASE WHEN kind = 'hard_bounce' THEN 'bounced' ELSE kind END
    FROM events
    WHERE account_id = $1 AND newsletter_id IS NOT NULL
      AND kind IN ('bounced', 'hard_bounce', 'complained', 'unsubscribed', 'resubscribed')
)
INSERT INTO newsletter_erased_figures AS kept (newsletter_id, figure, count)
SELECT newsletter_id, figure, count(*) FROM counted GROUP BY newsletter_id, figure
ON CONFLICT (newsletter_id, figure) DO UPDATE SET count = kept.count + EXCLUDED.count;

-- name: newsletter_erased_figures
SELECT figure, count FROM newsletter_erased_figures WHERE newsletter_id = $1;

-- name: newsletter_account
SELECT id, external_id, email, name, newsletter FROM accounts WHERE external_id = $1;

-- name: newsletter_versions
-- What a renderer needs of the newsletters of a claimed batch; `links`: the numbered links to
-- rewrite for counting clicks (notifier.clicks), in link order.
SELECT n.id, n.subject, n.preheader, n.body, n.body_format, n.updated_at,
       ARRAY(SELECT l.url FROM newsletter_links l WHERE l.newsletter_id = n.id ORDER BY l.link) AS links
FROM newsletters n WHERE n.id = ANY($1::bigint[]);

-- name: email_of_account
-- The e-mail a member's link came from (`?e=`), only if it was sent to that member.
SELECT id, newsletter_id FROM emails WHERE id = $1 AND account_id = $2;

-- name: insert_member_event
INSERT INTO events (kind, account_id, email_id, newsletter_id, method, detail)
VALUES ($1, $2, $3, $4, $5, $6);

-- name: member_for_update
SELECT id, email, name, locale, digest_frequency, digest_hour, digest_weekday, timezone, newsletter,
       digest_categories AS categories, quiet_hours
FROM accounts WHERE id = $1 FOR UPDATE;

-- name: member
SELECT id, email, name, locale, digest_frequency, digest_hour, digest_weekday, timezone, newsletter,
       digest_categories AS categories, quiet_hours
FROM accounts WHERE id = $1;

-- name: last_digest_frequency
-- What the member had before digests were turned off through an unsubscribe link.
SELECT detail->>'previous_frequency' FROM events
WHERE account_id = $1 AND kind = 'unsubscribed' AND detail->>'list' IN ('digest', 'all')
ORDER BY id DESC LIMIT 1;

-- name: insert_confirmation_email
INSERT INTO emails (kind, queue, account_id, to_address, template, context, idempotency_key)
SELECT 'confirmation', $2, $1, $3, $4, $5, $6
WHERE NOT EXISTS (
    SELECT 1 FROM emails WHERE account_id = $1 AND kind = 'confirmation' AND idempotency_key = $6);

-- name: cancel_queued_newsletters_of_account
-- A member who opts out while a newsletter is sending gets nothing more that is still queued
-- (or waiting for their local time).
UPDATE emails SET status = 'cancelled', last_error = 'the member opted out'
WHERE account_id = $1 AND kind = 'newsletter' AND status IN ('waiting', 'queued');
