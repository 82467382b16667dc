-- Console sessions: an API key pasted once at sign-in is exchanged for a server-side session.
-- Only a sha256 of the session id (the cookie) is stored; revoking or deleting the key ends its
-- sessions (checked on every request, and the rows go with a deleted key).

CREATE TABLE console_sessions (
    id_hash       bytea PRIMARY KEY,             -- sha256 of the random id in the cookie
    api_key_id    bigint NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    scope         text NOT NULL CHECK (scope IN ('admin', 'newsletters')),
    csrf_token    text NOT NULL,                 -- per-session token every console form carries
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX console_sessions_key_idx ON console_sessions (api_key_id);
CREATE INDEX console_sessions_expires_idx ON console_sessions (expires_at);
