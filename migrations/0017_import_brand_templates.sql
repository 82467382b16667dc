-- Member import (docs/import.md): a history of imports, and the staging tables rows are copied
-- into (PostgreSQL COPY) before they are checked and merged in set-based SQL. An import runs in
-- one transaction and deletes its staging rows before it commits, so other sessions never see
-- them; the tables are UNLOGGED (nothing in them must survive a crash) and have no index (COPY
-- stays fast; each import's statements scan its own rows once).
CREATE TABLE imports (
    id          bigserial PRIMARY KEY,
    actor_type  text NOT NULL,
    actor       text NOT NULL,
    source      text NOT NULL,                   -- the file's name, as given
    created     integer NOT NULL DEFAULT 0,
    updated     integer NOT NULL DEFAULT 0,
    unchanged   integer NOT NULL DEFAULT 0,
    failed      integer NOT NULL DEFAULT 0,
    opted_in    integer NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

CREATE UNLOGGED TABLE import_rows (
    import_id   bigint NOT NULL,
    row_no      integer NOT NULL,                -- as a spreadsheet numbers it: the header is row 1
    external_id text NOT NULL,
    email       text,                            -- NULL: the column is absent or the cell empty
    name        text,
    timezone    text,
    locale      text,
    attributes  text                             -- a JSON object of the `attributes.*` columns
);

CREATE UNLOGGED TABLE import_errors (
    import_id   bigint NOT NULL,
    row_no      integer NOT NULL,
    field       text NOT NULL,
    reason      text NOT NULL
);

-- The house style set in the console (notifier.brand): one row; a NULL column falls back to the
-- NOTIFIER_BRAND_* setting. Values are checked on the way in and again when read.
CREATE TABLE brand (
    id            boolean PRIMARY KEY DEFAULT true CHECK (id),
    name          text,
    logo_url      text,
    primary_color text CHECK (primary_color ~ '^#[0-9a-f]{6}$'),
    accent_color  text CHECK (accent_color ~ '^#[0-9a-f]{6}$'),
    footer_text   text,
    updated_by    text NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Reusable newsletter templates: a saved subject, preheader and body a draft starts from
-- (notifier.newsletter_templates). A draft copies them; the template stays as it was.
CREATE TABLE newsletter_templates (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    subject     text NOT NULL,
    preheader   text NOT NULL DEFAULT '',
    body        text NOT NULL,
    body_format text NOT NULL DEFAULT 'markdown' CHECK (body_format IN ('markdown', 'html')),
    created_by  text NOT NULL,
    updated_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
