-- name: test_send_subscribers
-- Of the given addresses (trimmed, lower-cased), those of members the newsletter would reach now:
-- opted in and, when $2 (double opt-in), their latest newsletter consent granted and confirmed.
-- Suppressions are checked apart, so that a refusal can say why.
SELECT DISTINCT lower(a.email) AS address
FROM accounts a
WHERE lower(a.email) = ANY($1::text[])
  AND a.newsletter
  AND (NOT $2::boolean OR (
        SELECT c.granted AND c.confirmed_at IS NOT NULL
        FROM consents c
        WHERE c.account_id = a.id AND c.topic = 'newsletter'
        ORDER BY c.id DESC
        LIMIT 1) IS TRUE);
