-- Lists, member attributes and segments (issue #18).
--
-- The single newsletter consent becomes the default list `newsletter`: its membership stays the
-- account's `newsletter` flag (every existing reader and writer of it keeps working), and every
-- existing newsletter consent row now names that list. Other lists keep their members in
-- `list_members`; each opt-in and opt-out of any list is a `consents` row naming the list.

CREATE TABLE lists (
    id            bigserial PRIMARY KEY,
    key           text NOT NULL UNIQUE CHECK (key ~ '^[a-z][a-z0-9-]{0,39}$'),
    name          text NOT NULL,
    description   text NOT NULL DEFAULT '',
    double_opt_in boolean NOT NULL DEFAULT false,   -- the default list follows NOTIFIER_NEWSLETTER_DOUBLE_OPT_IN
    is_default    boolean NOT NULL DEFAULT false,
    archived_at   timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (NOT (is_default AND archived_at IS NOT NULL))
);
CREATE UNIQUE INDEX lists_one_default_idx ON lists (is_default) WHERE is_default;

INSERT INTO lists (key, name, description, is_default)
VALUES ('newsletter', 'Newsletter',
        'News and information about the organisation, about once a month.', true);

CREATE TABLE list_members (
    list_id     bigint NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
    account_id  bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    subscribed  boolean NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (list_id, account_id)
);
CREATE INDEX list_members_account_idx ON list_members (account_id);
CREATE INDEX list_members_subscribed_idx ON list_members (list_id, account_id) WHERE subscribed;

-- Existing consent evidence moves to the default list.
ALTER TABLE consents ADD COLUMN list_id bigint REFERENCES lists (id) ON DELETE CASCADE;
UPDATE consents SET list_id = (SELECT id FROM lists WHERE is_default) WHERE topic = 'newsletter';
CREATE INDEX consents_list_idx ON consents (account_id, list_id, id DESC);

-- Member attributes: a JSON object the producer sets (validated and size-limited by the API).
ALTER TABLE accounts ADD COLUMN attributes jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(attributes) = 'object');

-- Saved segments: a rule (docs/newsletters.md) over attributes, locale, time zone and created_at.
CREATE TABLE segments (
    id          bigserial PRIMARY KEY,
    key         text NOT NULL UNIQUE CHECK (key ~ '^[a-z][a-z0-9-]{0,39}$'),
    name        text NOT NULL,
    rule        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A newsletter's audience: members of any of its lists (none named: the default list) who match
-- its segment (inline rule, or a saved segment read when sending starts). Keys never change.
ALTER TABLE newsletters ADD COLUMN lists text[] NOT NULL DEFAULT '{}';
ALTER TABLE newsletters ADD COLUMN segment jsonb;
ALTER TABLE newsletters ADD COLUMN segment_key text REFERENCES segments (key) ON DELETE RESTRICT;
