-- name: claim_idempotency_key
-- Waits for a concurrent holder's transaction; true when this request now owns the key.
INSERT INTO idempotency_keys (api_key_id, route, key, request_hash)
VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING
RETURNING true;

-- name: find_idempotency_key
SELECT request_hash, status, response, created_at < now() - $4::interval AS expired
FROM idempotency_keys
WHERE api_key_id = $1 AND route = $2 AND key = $3;

-- name: delete_expired_idempotency_key
DELETE FROM idempotency_keys
WHERE api_key_id = $1 AND route = $2 AND key = $3 AND created_at < now() - $4::interval;

-- name: complete_idempotency_key
UPDATE idempotency_keys SET status = $4, response = $5, account_id = $6
WHERE api_key_id = $1 AND route = $2 AND key = $3;

-- name: purge_idempotency_keys
DELETE FROM idempotency_keys WHERE created_at < now() - $1::interval;

-- name: idempotency_keys_naming
-- Records tied to no account whose key or stored answer contains $1 (an erased member's external
-- id, e.g. a batch answer's "no account with external_id ..."); the caller checks for the whole
-- token. Reads the table (kept for KEY_TTL only) once per erasure.
SELECT api_key_id, route, key, response
FROM idempotency_keys
WHERE account_id IS NULL AND (strpos(key, $1) > 0 OR strpos(response::text, $1) > 0)
FOR UPDATE;

-- name: delete_idempotency_key
DELETE FROM idempotency_keys WHERE api_key_id = $1 AND route = $2 AND key = $3;

-- name: replace_idempotency_response
UPDATE idempotency_keys SET response = $4 WHERE api_key_id = $1 AND route = $2 AND key = $3;
