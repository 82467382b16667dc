-- name: insert_newsletter_template
-- No row when the name is taken.
INSERT INTO newsletter_templates (name, subject, preheader, body, body_format, created_by, updated_by)
VALUES ($1, $2, $3, $4, $5, $6, $6)
ON CONFLICT (name) DO NOTHING
RETURNING *;

-- name: get_newsletter_template
SELECT * FROM newsletter_templates WHERE id = $1;

-- name: update_newsletter_template
-- Raises unique_violation when the new name is another template's.
UPDATE newsletter_templates
SET name = $2, subject = $3, preheader = $4, body = $5, body_format = $6, updated_by = $7, updated_at = now()
WHERE id = $1
RETURNING *;

-- name: delete_newsletter_template
DELETE FROM newsletter_templates WHERE id = $1 RETURNING id;

-- name: list_newsletter_templates
-- Newest first, keyset-paginated by id.
SELECT * FROM newsletter_templates
WHERE ($1::bigint IS NULL OR id < $1)
ORDER BY id DESC
LIMIT $2;
