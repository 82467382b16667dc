-- Console users are people (docs/console.md): each signs in as themselves by a magic link or
-- OpenID Connect, holds one role, and what they change is audited under their name. API keys stay
-- for machines; signing in to the console with one is for development only.

CREATE TABLE console_users (
    id               bigserial PRIMARY KEY,
    email            text NOT NULL CHECK (email = lower(email)),
    name             text NOT NULL,
    role             text NOT NULL CHECK (role IN ('marketing', 'support', 'operator', 'admin')),
    status           text NOT NULL DEFAULT 'invited' CHECK (status IN ('invited', 'active', 'disabled')),
    invited_by       text NOT NULL,                -- the audit actor who added the user
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_sign_in_at  timestamptz
);
CREATE UNIQUE INDEX console_users_email_idx ON console_users (email);

-- A magic link: only sha256(token ":" nonce) is kept, the nonce living in a cookie of the browser
-- that asked, so the link works once, for 15 minutes, in that browser only.
CREATE TABLE console_sign_in_links (
    token_hash   bytea PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES console_users (id) ON DELETE CASCADE,
    next_path    text NOT NULL DEFAULT '/console/',  -- the console page to land on after sign-in
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz
);
CREATE INDEX console_sign_in_links_expires_idx ON console_sign_in_links (expires_at);

-- A session belongs to a person (or, in development, to an API key) and carries its role; the
-- idle and absolute timeouts are checked on every request. Existing key sessions end here.
DELETE FROM console_sessions;
ALTER TABLE console_sessions
    DROP COLUMN scope,
    ALTER COLUMN api_key_id DROP NOT NULL,
    ADD COLUMN user_id bigint REFERENCES console_users (id) ON DELETE CASCADE,
    ADD COLUMN role text NOT NULL CHECK (role IN ('marketing', 'support', 'operator', 'admin')),
    ADD COLUMN method text NOT NULL CHECK (method IN ('link', 'oidc', 'api_key')),
    ADD COLUMN signed_in_at timestamptz NOT NULL DEFAULT now(),  -- for "fresh sign-in" checks
    ADD COLUMN user_agent text NOT NULL DEFAULT '',
    ADD CONSTRAINT console_sessions_one_owner CHECK ((user_id IS NULL) <> (api_key_id IS NULL));
CREATE INDEX console_sessions_user_idx ON console_sessions (user_id);

-- The audit names the person: actor type `console`, actor `email (role)`, and the user's row.
ALTER TABLE audit_log DROP CONSTRAINT audit_log_actor_type_check;
ALTER TABLE audit_log
    ADD CONSTRAINT audit_log_actor_type_check
        CHECK (actor_type IN ('api_key', 'member', 'system', 'operator', 'console')),
    ADD COLUMN console_user_id bigint REFERENCES console_users (id) ON DELETE SET NULL;

-- Four-eyes sending (NOTIFIER_FOUR_EYES_RECIPIENTS): who approved a large newsletter, and when.
ALTER TABLE newsletters
    ADD COLUMN approved_by text,
    ADD COLUMN approved_at timestamptz;
