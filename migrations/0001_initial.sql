-- The first schema, shaped for the whole design (DESIGN.md): accounts with their preferences,
-- inbox messages, digests, an outbox of e-mails, append-only events, suppressions by address
-- hash, newsletters, consents, API keys, idempotency records and the audit trail.

CREATE TABLE api_keys (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL,
    prefix        text NOT NULL,                 -- first characters of the key, shown in listings
    key_hash      bytea NOT NULL UNIQUE,         -- sha256 of the whole key; the key itself is never stored
    scopes        text[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    CHECK (scopes <@ ARRAY['accounts', 'messages', 'service', 'newsletters', 'admin']::text[])
);

CREATE TABLE accounts (
    id                bigserial PRIMARY KEY,
    external_id       text NOT NULL UNIQUE,
    email             text NOT NULL,
    name              text NOT NULL,
    timezone          text NOT NULL DEFAULT 'UTC',
    locale            text NOT NULL DEFAULT 'en',
    digest_frequency  text NOT NULL DEFAULT 'daily'
        CHECK (digest_frequency IN ('off', 'immediate', 'hourly', 'daily', 'weekly')),
    digest_hour       smallint NOT NULL DEFAULT 8 CHECK (digest_hour BETWEEN 0 AND 23),
    digest_weekday    smallint NOT NULL DEFAULT 1 CHECK (digest_weekday BETWEEN 1 AND 7),  -- ISO: 1 = Monday
    newsletter        boolean NOT NULL DEFAULT false,
    digest_window_start timestamptz NOT NULL DEFAULT now(),  -- start of the open digest window
    next_digest_at    timestamptz,                           -- end of the open window; NULL when off
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX accounts_email_idx ON accounts (lower(email));
CREATE INDEX accounts_due_idx ON accounts (next_digest_at) WHERE next_digest_at IS NOT NULL;

CREATE TABLE consents (
    id          bigserial PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    topic       text NOT NULL DEFAULT 'newsletter',
    granted     boolean NOT NULL,
    source      text NOT NULL,                   -- api, preference-centre, one-click, mailto, confirmation
    wording     text,
    wording_version text,
    confirmed_at timestamptz,                    -- double opt-in confirmation
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consents_account_idx ON consents (account_id, created_at DESC);

CREATE TABLE digests (
    id            bigserial PRIMARY KEY,
    account_id    bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    frequency     text NOT NULL,
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    message_count integer NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, window_end)
);

CREATE TABLE messages (
    id           bigserial PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    category     text NOT NULL,
    subject      text NOT NULL,
    body         text NOT NULL,
    url          text,
    data         jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    read_at      timestamptz,
    archived_at  timestamptz,
    digest_id    bigint REFERENCES digests (id) ON DELETE SET NULL
);
CREATE INDEX messages_inbox_idx ON messages (account_id, id DESC);
CREATE INDEX messages_pending_idx ON messages (account_id, id)
    WHERE digest_id IS NULL AND read_at IS NULL AND archived_at IS NULL;
CREATE INDEX messages_created_idx ON messages (created_at);

CREATE TABLE newsletters (
    id            bigserial PRIMARY KEY,
    subject       text NOT NULL,
    preheader     text NOT NULL DEFAULT '',
    body          text NOT NULL,
    body_format   text NOT NULL DEFAULT 'markdown' CHECK (body_format IN ('markdown', 'html')),
    status        text NOT NULL DEFAULT 'draft'
        CHECK (status IN ('draft', 'scheduled', 'sending', 'sent', 'cancelled')),
    scheduled_at  timestamptz,
    started_at    timestamptz,
    finished_at   timestamptz,
    created_by    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The outbox: every e-mail is a row before any job is enqueued. Redis only rings the bell.
CREATE TABLE emails (
    id              bigserial PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('service', 'digest', 'newsletter', 'test', 'confirmation')),
    queue           text NOT NULL,
    account_id      bigint REFERENCES accounts (id) ON DELETE CASCADE,
    to_address      text NOT NULL,
    template        text,
    subject         text,
    context         jsonb NOT NULL DEFAULT '{}',
    digest_id       bigint REFERENCES digests (id) ON DELETE CASCADE,
    newsletter_id   bigint REFERENCES newsletters (id) ON DELETE CASCADE,
    idempotency_key text,
    status          text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'suppressed', 'cancelled')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    locked_until    timestamptz,
    last_error      text,
    message_id      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX emails_due_idx ON emails (next_attempt_at) WHERE status IN ('queued', 'sending');
CREATE INDEX emails_account_idx ON emails (account_id, id DESC);
CREATE INDEX emails_failed_idx ON emails (created_at) WHERE status = 'failed';
CREATE UNIQUE INDEX emails_newsletter_recipient_idx ON emails (newsletter_id, account_id)
    WHERE newsletter_id IS NOT NULL AND kind = 'newsletter';
CREATE UNIQUE INDEX emails_digest_idx ON emails (digest_id) WHERE digest_id IS NOT NULL;

-- Append-only facts: sent, failed, bounced, suppressed, unsubscribed, resubscribed, ...
CREATE TABLE events (
    id            bigserial PRIMARY KEY,
    kind          text NOT NULL,
    account_id    bigint REFERENCES accounts (id) ON DELETE CASCADE,
    email_id      bigint REFERENCES emails (id) ON DELETE SET NULL,
    newsletter_id bigint REFERENCES newsletters (id) ON DELETE SET NULL,
    method        text,
    detail        jsonb,
    dedupe_key    text UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_account_idx ON events (account_id, id DESC);
CREATE INDEX events_newsletter_idx ON events (newsletter_id, kind) WHERE newsletter_id IS NOT NULL;

-- Addresses not to write to, kept only as a hash so they survive erasure without personal data.
CREATE TABLE suppressions (
    address_hash  bytea NOT NULL,                -- sha256 of the normalised address
    list          text NOT NULL DEFAULT 'all' CHECK (list IN ('all', 'newsletter', 'digest')),
    reason        text NOT NULL CHECK (reason IN ('unsubscribed', 'hard_bounce', 'complaint', 'manual', 'erased')),
    detail        text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (address_hash, list)
);

CREATE TABLE idempotency_keys (
    api_key_id    bigint NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    key           text NOT NULL,
    route         text NOT NULL,
    request_hash  bytea NOT NULL,
    status        smallint,                      -- NULL while the first request is in flight
    response      jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (api_key_id, route, key)
);
CREATE INDEX idempotency_created_idx ON idempotency_keys (created_at);

-- Who changed what, when. Rows of an erased account go with it; the erasure itself is kept
-- in `erasures` without personal data.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    account_id  bigint REFERENCES accounts (id) ON DELETE CASCADE,
    actor_type  text NOT NULL CHECK (actor_type IN ('api_key', 'member', 'system', 'operator')),
    actor       text NOT NULL,
    action      text NOT NULL,
    changes     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_account_idx ON audit_log (account_id, id DESC);

CREATE TABLE erasures (
    id          bigserial PRIMARY KEY,
    reason      text NOT NULL,
    actor_type  text NOT NULL,
    actor       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Liveness of worker processes, written by the heartbeat job.
CREATE TABLE worker_heartbeats (
    worker      text PRIMARY KEY,
    beat_at     timestamptz NOT NULL DEFAULT now(),
    beats       bigint NOT NULL DEFAULT 1
);
