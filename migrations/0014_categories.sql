-- Declared categories (issue 14): a label and description per language, a default digest
-- frequency (NULL: the member's own default) and whether members may turn it off. Intake declares
-- an unknown category with these defaults, so the categories already used are declared here.
-- Members choose a frequency per category (`accounts.digest_categories`, {"key": {"frequency":
-- ...}}) and quiet hours (`accounts.quiet_hours`, {"start": "22:00", "end": "07:00", "weekends":
-- false}, NULL: none). With several frequencies in use, each has its own window
-- (`accounts.digest_clocks`, {"daily": {"start": ..., "end": ...}}; empty: the one window of the
-- account's columns). A digest records which frequencies it closed (`digests.frequencies`).

CREATE TABLE categories (
    id                bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    key               text PRIMARY KEY CHECK (key ~ '^[a-z0-9][a-z0-9._\-]*$' AND length(key) <= 64),
    labels            jsonb NOT NULL DEFAULT '{}',
    descriptions      jsonb NOT NULL DEFAULT '{}',
    default_frequency text CHECK (default_frequency IN ('off', 'immediate', 'hourly', 'daily', 'weekly')),
    required          boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (NOT (required AND default_frequency = 'off'))
);

INSERT INTO categories (key)
SELECT DISTINCT category FROM messages
WHERE category ~ '^[a-z0-9][a-z0-9._\-]*$' AND length(category) <= 64
ON CONFLICT DO NOTHING;

ALTER TABLE accounts
    ADD COLUMN digest_categories jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN quiet_hours jsonb,
    ADD COLUMN digest_clocks jsonb NOT NULL DEFAULT '{}';

ALTER TABLE digests ADD COLUMN frequencies text[];
