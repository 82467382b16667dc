-- Lists, list membership, member attributes and saved segments.

-- name: insert_list
-- No row when the key is taken.
INSERT INTO lists (key, name, description, double_opt_in)
VALUES ($1, $2, $3, $4)
ON CONFLICT (key) DO NOTHING
RETURNING *;

-- name: get_list
SELECT * FROM lists WHERE key = $1;

-- name: all_lists
-- The default list first, then by key; $1: archived ones too.
SELECT * FROM lists WHERE $1::boolean OR archived_at IS NULL ORDER BY is_default DESC, key;

-- name: lists_by_key
SELECT * FROM lists WHERE key = ANY($1::text[]);

-- name: update_list
UPDATE lists SET name = $2, description = $3, double_opt_in = $4, updated_at = now()
WHERE key = $1
RETURNING *;

-- name: archive_list
-- The default list is never archived; archiving twice keeps the first time.
UPDATE lists SET archived_at = coalesce(archived_at, now()), updated_at = now()
WHERE key = $1 AND NOT is_default
RETURNING *;

-- name: list_subscribers
-- How many members each list of $1 has subscribed (confirmed or not): the default list's are the
-- accounts with `newsletter`.
SELECT l.id, CASE WHEN l.is_default THEN (SELECT count(*) FROM accounts WHERE newsletter)
                  ELSE (SELECT count(*) FROM list_members m WHERE m.list_id = l.id AND m.subscribed)
             END AS subscribers
FROM lists l WHERE l.id = ANY($1::bigint[]);

-- name: memberships_of_account
-- Every list not archived and whether the member is subscribed (the default list: `newsletter`).
SELECT l.*, CASE WHEN l.is_default THEN a.newsletter ELSE coalesce(m.subscribed, false) END AS subscribed
FROM accounts a
CROSS JOIN lists l
LEFT JOIN list_members m ON m.list_id = l.id AND m.account_id = a.id
WHERE a.id = $1 AND l.archived_at IS NULL
ORDER BY l.is_default DESC, l.key;

-- name: set_list_members
-- Member $1's wishes for the lists $2 (ids) to be subscribed or not ($3), in one statement: each
-- membership that changes is written with a consent row (source $6; the wording $4 and its
-- version $5 per list, NULL where none was shown), and leaving a list cancels what is still
-- queued to the member for it. One row back per list whose membership changed (`before`: the
-- previous state); the consent rows follow the order of $2.
WITH wanted AS (
    SELECT * FROM unnest($2::bigint[], $3::boolean[], $4::text[], $5::text[]) WITH ORDINALITY
        AS w(list_id, subscribed, wording, wording_version, pos)
), stored AS (
    SELECT list_id, subscribed FROM list_members
    WHERE account_id = $1 AND list_id = ANY($2::bigint[])
    FOR UPDATE
), changed AS (
    INSERT INTO list_members (list_id, account_id, subscribed)
    SELECT w.list_id, $1, w.subscribed
    FROM wanted w LEFT JOIN stored s ON s.list_id = w.list_id
    WHERE coalesce(s.subscribed, false) <> w.subscribed
    ON CONFLICT (list_id, account_id) DO UPDATE SET subscribed = EXCLUDED.subscribed, updated_at = now()
    RETURNING list_id, subscribed
), consented AS (
    INSERT INTO consents (account_id, topic, granted, source, wording, wording_version, list_id)
    SELECT $1, 'list', c.subscribed, $6, w.wording, w.wording_version, c.list_id
    FROM changed c JOIN wanted w ON w.list_id = c.list_id
    ORDER BY w.pos
), cancelled AS (
    UPDATE emails SET status = 'cancelled', last_error = 'the member left the list'
    WHERE account_id = $1 AND kind = 'newsletter' AND status = 'queued'
      AND (context->>'list_id')::bigint IN (SELECT list_id FROM changed WHERE NOT subscribed)
)
SELECT list_id, NOT subscribed AS before FROM changed;

-- name: unconfirmed_opt_ins
-- Members subscribed to a list with double opt-in (the default list's follows the setting, see
-- `set_default_double_opt_in`) whose latest consent for it is an unconfirmed opt-in not yet asked
-- about, at most $1 in all. The default list's members are `accounts.newsletter`.
SELECT a.id AS account_id, a.email, a.name, c.id AS consent_id, l.id AS list_id, l.name AS list_name,
       l.is_default
FROM lists l
CROSS JOIN LATERAL (
    SELECT a.id, a.email, a.name FROM accounts a WHERE l.is_default AND a.newsletter
    UNION ALL
    SELECT a.id, a.email, a.name
    FROM list_members m JOIN accounts a ON a.id = m.account_id
    WHERE NOT l.is_default AND m.list_id = l.id AND m.subscribed
) a
CROSS JOIN LATERAL (
    SELECT id, granted, confirmed_at FROM consents
    WHERE account_id = a.id AND list_id = l.id
    ORDER BY id DESC LIMIT 1) c
WHERE l.double_opt_in AND l.archived_at IS NULL
  AND c.granted AND c.confirmed_at IS NULL
  AND NOT EXISTS (
        SELECT 1 FROM emails e
        WHERE e.account_id = a.id AND e.kind = 'confirmation' AND e.idempotency_key = 'confirm:' || c.id)
LIMIT $1;

-- name: confirm_opt_in
-- Stamp member $1's latest opt-in to list $2 (NULL: the default list) confirmed.
UPDATE consents SET confirmed_at = now()
WHERE id = (SELECT id FROM consents
            WHERE account_id = $1 AND list_id = coalesce($2::bigint, (SELECT id FROM lists WHERE is_default))
            ORDER BY id DESC LIMIT 1)
  AND granted AND confirmed_at IS NULL
RETURNING id;

-- name: set_default_double_opt_in
-- The default list's double opt-in is NOTIFIER_NEWSLETTER_DOUBLE_OPT_IN ($1): written by each web
-- and worker process as it starts and by `notifier migrate` (lists.follow_setting); a row back
-- only when it changed.
UPDATE lists SET double_opt_in = $1, updated_at = now()
WHERE is_default AND double_opt_in <> $1
RETURNING id;

-- name: export_list_memberships
SELECT l.key AS list, m.subscribed, m.updated_at
FROM list_members m JOIN lists l ON l.id = m.list_id
WHERE m.account_id = $1 ORDER BY l.key;

-- name: update_account_attributes
UPDATE accounts SET attributes = $2, updated_at = now() WHERE id = $1
RETURNING *;

-- name: insert_segment
INSERT INTO segments (key, name, rule) VALUES ($1, $2, $3)
ON CONFLICT (key) DO NOTHING
RETURNING *;

-- name: get_segment
SELECT * FROM segments WHERE key = $1;

-- name: all_segments
SELECT * FROM segments ORDER BY key;

-- name: update_segment
UPDATE segments SET name = $2, rule = $3, updated_at = now() WHERE key = $1
RETURNING *;

-- name: delete_segment
-- Refused (foreign key) while a newsletter names it.
DELETE FROM segments WHERE key = $1 RETURNING id;

-- name: audience_members
-- The audience of lists $1 (ids, in the newsletter's order): each member of any of the lists
-- once, with the first of them they belong to (list_id NULL for the default list, whose members
-- are `accounts.newsletter`); confirmed where the list asks for it (`double_opt_in`; the default
-- list's follows NOTIFIER_NEWSLETTER_DOUBLE_OPT_IN); not suppressed for all mail or
-- newsletters; matching the segment, whose compiled condition replaces the marked TRUE
-- (notifier/audience.py; its parameters follow the statement's own). `timezone` and `locale`
-- are for the fan-out (a send at each member's local time, a language's variant).
SELECT a.id AS account_id, a.email, a.name, a.timezone, a.locale, t.list_id, t.list_key
FROM accounts a
CROSS JOIN LATERAL (
    SELECT CASE WHEN l.is_default THEN NULL ELSE l.id END AS list_id, l.key AS list_key
    FROM unnest($1::bigint[]) WITH ORDINALITY AS u(id, pos)
    JOIN lists l ON l.id = u.id AND l.archived_at IS NULL
    WHERE CASE WHEN l.is_default THEN a.newsletter
               ELSE EXISTS (SELECT 1 FROM list_members m
                            WHERE m.list_id = l.id AND m.account_id = a.id AND m.subscribed)
          END
      AND (NOT l.double_opt_in OR (
              SELECT c.granted AND c.confirmed_at IS NOT NULL FROM consents c
              WHERE c.account_id = a.id AND c.list_id = l.id
              ORDER BY c.id DESC LIMIT 1) IS TRUE)
    ORDER BY u.pos
    LIMIT 1
) t
WHERE (TRUE /*segment*/)
  AND NOT EXISTS (
        SELECT 1 FROM suppressions s
        WHERE s.address_hash = sha256(convert_to(lower(btrim(a.email)), 'UTF8'))
          AND s.list IN ('all', 'newsletter'))

-- name: default_list_id
SELECT id FROM lists WHERE is_default;

-- name: segment_rule
SELECT rule FROM segments WHERE key = $1;

-- name: live_list_ids
-- The ids of the lists named by keys $1 that are not archived, in that order.
SELECT coalesce(array_agg(l.id ORDER BY u.pos), '{}')
FROM unnest($1::text[]) WITH ORDINALITY AS u(key, pos)
JOIN lists l ON l.key = u.key AND l.archived_at IS NULL;

-- name: list_membership
-- The list $1 and whether member $2 is subscribed to it (never a member: false).
SELECT l.id, l.key, l.name, l.archived_at, coalesce(m.subscribed, false) AS subscribed
FROM lists l
LEFT JOIN list_members m ON m.list_id = l.id AND m.account_id = $2
WHERE l.id = $1;

-- name: insert_default_list
-- The default list as migration 0015 made it (for a database emptied by tests); idempotent.
INSERT INTO lists (key, name, description, is_default)
VALUES ('newsletter', 'Newsletter', 'News and information about the organisation, about once a month.', true)
ON CONFLICT DO NOTHING;

-- name: list_of_email
-- The list (other than the default) a newsletter e-mail $1 to member $2 was sent through.
SELECT (context->>'list_id')::bigint FROM emails
WHERE id = $1 AND account_id = $2 AND kind = 'newsletter' AND context->>'list_id' IS NOT NULL;
