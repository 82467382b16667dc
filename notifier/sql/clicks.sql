-- Clicks without tracking people: a newsletter's numbered links and a counter per link and day.
-- Nothing here names a member (no account, address, IP address or token). See notifier/clicks.py.

-- name: insert_newsletter_links
INSERT INTO newsletter_links (newsletter_id, link, url)
SELECT $1, r.link, r.url FROM unnest($2::int[], $3::text[]) AS r(link, url)
ON CONFLICT DO NOTHING;

-- name: follow_link
-- The newsletter's own address for link $2, and (when $3) one more click on it today (UTC).
-- The commit does not wait for the WAL flush (`synchronous_commit` off for this transaction
-- only): a crash may lose the last fraction of a second of clicks, never corrupt a count.
WITH target AS (
    SELECT l.newsletter_id, l.link, l.url FROM newsletter_links l
    WHERE l.newsletter_id = $1 AND l.link = $2
), counted AS (
    INSERT INTO link_clicks AS c (newsletter_id, link, day, clicks)
    SELECT newsletter_id, link, (now() AT TIME ZONE 'UTC')::date, 1 FROM target
    WHERE $3::boolean AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
    ON CONFLICT (newsletter_id, link, day) DO UPDATE SET clicks = c.clicks + 1
)
SELECT url FROM target;

-- name: newsletter_clicks
-- Every link of a newsletter with its clicks per day (UTC), link order, oldest day first.
SELECT l.link, l.url, c.day, coalesce(c.clicks, 0) AS clicks
FROM newsletter_links l
LEFT JOIN link_clicks c ON c.newsletter_id = l.newsletter_id AND c.link = l.link
WHERE l.newsletter_id = $1
ORDER BY l.link, c.day;
