-- `notifier dev` (notifier.dev): its database on the embedded or configured server.

-- name: database_exists
SELECT 1 FROM pg_database WHERE datname = $1;
