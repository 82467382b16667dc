-- name: get_brand
SELECT name, logo_url, primary_color, accent_color, footer_text, updated_by, updated_at FROM brand;

-- name: save_brand
-- NULL: the NOTIFIER_BRAND_* setting applies.
INSERT INTO brand (id, name, logo_url, primary_color, accent_color, footer_text, updated_by)
VALUES (true, $1, $2, $3, $4, $5, $6)
ON CONFLICT (id) DO UPDATE
SET name = $1, logo_url = $2, primary_color = $3, accent_color = $4, footer_text = $5,
    updated_by = $6, updated_at = now()
RETURNING name, logo_url, primary_color, accent_color, footer_text, updated_by, updated_at;
