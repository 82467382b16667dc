-- API keys (notifier.api.auth). Only the key's sha256 is stored.

-- name: insert_api_key
INSERT INTO api_keys (name, prefix, key_hash, scopes) VALUES ($1, $2, $3, $4) RETURNING id;

-- name: list_api_keys
SELECT id, name, prefix, scopes, created_at, last_used_at, revoked_at FROM api_keys ORDER BY id;

-- name: revoke_api_key
UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL;

-- name: active_api_key
SELECT id, name, scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL;

-- name: touch_api_key
UPDATE api_keys SET last_used_at = now() WHERE id = $1;
