-- Declared categories (notifier/categories.py, docs/digests.md "Categories").

-- name: categories_all
-- Every declared category: how often it goes out and what digests and pages call it.
SELECT key, labels, default_frequency, required FROM categories;

-- name: category_for_update
SELECT key, labels, descriptions, default_frequency, required FROM categories WHERE key = $1 FOR UPDATE;

-- name: category_upsert
INSERT INTO categories (key, labels, descriptions, default_frequency, required)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (key) DO UPDATE
SET labels = EXCLUDED.labels, descriptions = EXCLUDED.descriptions,
    default_frequency = EXCLUDED.default_frequency, required = EXCLUDED.required, updated_at = now()
RETURNING id, key, labels, descriptions, default_frequency, required, created_at, updated_at;

-- name: categories_page
-- Newest first below the cursor id ($1), $2 rows.
SELECT id, key, labels, descriptions, default_frequency, required, created_at, updated_at
FROM categories
WHERE ($1::bigint IS NULL OR id < $1)
ORDER BY id DESC
LIMIT $2;

-- name: categories_for_member
-- The preference centre's list: every category, by key.
SELECT key, labels, descriptions, default_frequency, required FROM categories ORDER BY key;
