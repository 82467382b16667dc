-- name: account_locale
-- The language tag a member chose (pages and e-mails speak it; notifier.i18n normalises it).
SELECT locale FROM accounts WHERE id = $1;

-- name: account_languages
-- Language and time zone of the members a batch of e-mails goes to, read at send time.
SELECT id, locale, timezone FROM accounts WHERE id = ANY($1::bigint[]);

-- name: set_newsletter_variants
-- A draft's per-language variants (only while it is a draft, like every other edit).
UPDATE newsletters SET variants = $2, updated_at = now() WHERE id = $1 AND status = 'draft'
RETURNING *;

-- name: newsletter_variants
-- What a renderer needs of the language variants of the newsletters of a claimed batch.
SELECT id, variants FROM newsletters WHERE id = ANY($1::bigint[]) AND variants <> '{}'::jsonb;
