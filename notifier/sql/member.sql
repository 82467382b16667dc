-- The member's own inbox (notifier/inbox.py, used by the member API, the hosted page and the
-- console). Every query takes the account id from the member's token: a message of another
-- account is never found, read or changed.

-- name: member_account
SELECT id, external_id, name, timezone, locale, created_at FROM accounts WHERE id = $1;

-- name: member_account_by_external_id
SELECT id, external_id, name, timezone, locale, created_at FROM accounts WHERE external_id = $1;

-- name: member_message
SELECT id, category, subject, body, url, created_at, read_at, seen_at, archived_at
FROM messages WHERE account_id = $1 AND id = $2 AND messages_by_id(created_at, $2);

-- name: member_counts
-- Unread and unseen counts per category of the messages not archived.
SELECT category,
       count(*) AS unread,
       count(*) FILTER (WHERE seen_at IS NULL) AS unseen
FROM messages
WHERE account_id = $1 AND read_at IS NULL AND archived_at IS NULL
GROUP BY category
ORDER BY category;

-- name: member_mark_read
-- Idempotent: the first read time is kept; a read message is also seen.
UPDATE messages SET read_at = coalesce(read_at, now()), seen_at = coalesce(seen_at, now())
WHERE account_id = $1 AND id = $2 AND messages_by_id(created_at, $2)
RETURNING id, category, subject, body, url, created_at, read_at, seen_at, archived_at;

-- name: member_mark_unread
UPDATE messages SET read_at = NULL
WHERE account_id = $1 AND id = $2 AND messages_by_id(created_at, $2)
RETURNING id, category, subject, body, url, created_at, read_at, seen_at, archived_at;

-- name: member_archive
-- Idempotent: the first archive time is kept. Archived messages leave digests and counts.
UPDATE messages SET archived_at = coalesce(archived_at, now())
WHERE account_id = $1 AND id = $2 AND messages_by_id(created_at, $2)
RETURNING id, category, subject, body, url, created_at, read_at, seen_at, archived_at;

-- name: member_unarchive
UPDATE messages SET archived_at = NULL
WHERE account_id = $1 AND id = $2 AND messages_by_id(created_at, $2)
RETURNING id, category, subject, body, url, created_at, read_at, seen_at, archived_at;

-- name: member_read_all
-- Every unread, unarchived message of the account (of one category when $2 is set).
UPDATE messages SET read_at = now(), seen_at = coalesce(seen_at, now())
WHERE account_id = $1 AND read_at IS NULL AND archived_at IS NULL
  AND ($2::text IS NULL OR category = $2);

-- name: member_seen
-- The bell was opened: every message not yet seen is seen now.
UPDATE messages SET seen_at = now()
WHERE account_id = $1 AND seen_at IS NULL AND read_at IS NULL AND archived_at IS NULL;

-- name: member_last_message_id
-- Where a new stream starts: messages after this one are news to it.
SELECT coalesce(max(id), 0) FROM messages WHERE account_id = $1;

-- name: member_news
-- What a stream sends when woken, in one round trip and as ready JSON text: the messages after
-- id $2 (oldest first, at most $3; none with $3 = 0) and the counts as `member_counts` gives them.
-- One row with a NULL id when there is no message.
WITH news AS (
    SELECT id,
           json_build_object('id', id, 'category', category, 'subject', subject, 'body', body,
                             'url', url, 'created_at', created_at, 'read_at', read_at,
                             'seen_at', seen_at, 'archived_at', archived_at)::text AS item
    FROM messages
    WHERE account_id = $1 AND id > $2
    ORDER BY id
    LIMIT $3
), counts AS (
    SELECT json_build_object('unread', coalesce(sum(unread), 0), 'unseen', coalesce(sum(unseen), 0),
                             'by_category', coalesce(json_object_agg(category, unread), '{}'::json))::text AS counts
    FROM (
        SELECT category, count(*) AS unread, count(*) FILTER (WHERE seen_at IS NULL) AS unseen
        FROM messages
        WHERE account_id = $1 AND read_at IS NULL AND archived_at IS NULL
        GROUP BY category
    ) c
)
SELECT news.id, news.item, counts.counts FROM counts LEFT JOIN news ON true ORDER BY news.id;
