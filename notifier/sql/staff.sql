-- Console users and their magic links (notifier.staff).

-- name: staff_insert
INSERT INTO console_users (email, name, role, invited_by) VALUES ($1, $2, $3, $4)
ON CONFLICT (email) DO NOTHING
RETURNING id, email, name, role, status, created_at, last_sign_in_at;

-- name: staff_all
SELECT id, email, name, role, status, invited_by, created_at, last_sign_in_at
FROM console_users
ORDER BY role <> 'admin', email;

-- name: staff_by_email
SELECT id, email, name, role, status, created_at, last_sign_in_at FROM console_users WHERE email = $1;

-- name: staff_by_id_for_update
SELECT id, email, name, role, status FROM console_users WHERE id = $1 FOR UPDATE;

-- name: staff_update
UPDATE console_users SET role = coalesce($2, role), status = coalesce($3, status)
WHERE id = $1
RETURNING id, email, name, role, status;

-- name: staff_purge_links
DELETE FROM console_sign_in_links WHERE expires_at < now() - interval '1 day';

-- name: staff_insert_link
INSERT INTO console_sign_in_links (token_hash, user_id, expires_at, next_path)
VALUES ($1, $2, now() + make_interval(secs => $3), $4);

-- name: staff_use_link
-- Spend a link once: unused, unexpired, its user not disabled.
UPDATE console_sign_in_links l SET used_at = now()
FROM console_users u
WHERE l.token_hash = $1 AND l.used_at IS NULL AND l.expires_at > now()
  AND u.id = l.user_id AND u.status <> 'disabled'
RETURNING u.id, u.email, u.name, u.role, u.status, l.next_path;

-- name: staff_signed_in
UPDATE console_users
SET last_sign_in_at = now(), status = CASE WHEN status = 'invited' THEN 'active' ELSE status END
WHERE id = $1;

-- name: staff_audit
-- Changes to console users, newest first.
SELECT id, actor_type, actor, action, changes, created_at
FROM audit_log WHERE account_id IS NULL AND action LIKE 'console\_user.%'
ORDER BY id DESC LIMIT $1;
