-- Webhooks out: endpoints, their deliveries (a durable outbox like `emails`) and the fan-out's
-- cursors over the append-only sources (`events`, `audit_log`, `erasures`).

-- The writing transaction's id on each source row, so the fan-out can read "every row whose
-- transaction has finished" without skipping a row whose id was taken before a later one but
-- committed after it. Existing rows keep NULL (they predate webhooks); set as two statements
-- so adding the column rewrites nothing.
ALTER TABLE events ADD COLUMN txid xid8;
ALTER TABLE events ALTER COLUMN txid SET DEFAULT pg_current_xact_id();
CREATE INDEX events_txid_idx ON events (txid, id) WHERE txid IS NOT NULL;
ALTER TABLE audit_log ADD COLUMN txid xid8;
ALTER TABLE audit_log ALTER COLUMN txid SET DEFAULT pg_current_xact_id();
CREATE INDEX audit_log_txid_idx ON audit_log (txid, id) WHERE txid IS NOT NULL;
ALTER TABLE erasures ADD COLUMN txid xid8;
ALTER TABLE erasures ALTER COLUMN txid SET DEFAULT pg_current_xact_id();
CREATE INDEX erasures_txid_idx ON erasures (txid, id) WHERE txid IS NOT NULL;

CREATE TABLE webhook_endpoints (
    id              bigserial PRIMARY KEY,
    url             text NOT NULL,
    description     text NOT NULL DEFAULT '',
    events          text[] NOT NULL,
    secret          bytea NOT NULL,          -- the signing secret, Fernet-encrypted with NOTIFIER_SECRET_KEY
    status          text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    disabled_reason text,
    failing_since   timestamptz,             -- first failure since the last success
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per (endpoint, source row): the fan-out inserts them, the webhook job delivers them.
-- A member's rows go with the member (erasure): their payloads name the member.
CREATE TABLE webhook_deliveries (
    id              bigserial PRIMARY KEY,
    endpoint_id     bigint NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    account_id      bigint REFERENCES accounts (id) ON DELETE CASCADE,
    source          text NOT NULL CHECK (source IN ('event', 'audit', 'erasure', 'newsletter')),
    source_id       bigint NOT NULL,
    event_type      text NOT NULL,
    payload         jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    locked_until    timestamptz,
    last_status     smallint,                -- the receiver's HTTP status of the last attempt
    last_error      text,
    occurred_at     timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (endpoint_id, source, source_id)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_member_idx ON webhook_deliveries (endpoint_id, account_id, occurred_at, id)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, id DESC);
CREATE INDEX webhook_deliveries_account_idx ON webhook_deliveries (account_id) WHERE account_id IS NOT NULL;

-- How far the fan-out has read each source: (txid, id) of the last row taken.
CREATE TABLE webhook_cursors (
    source  text PRIMARY KEY,
    txid    xid8 NOT NULL,
    last_id bigint NOT NULL
);
