-- Newsletters in the members' languages: per-language subject, preheader and body, by shipped
-- language code ({"de": {"subject": ..., "preheader": ..., "body": ...}}). A member whose language
-- has no variant gets the newsletter's own subject and body (docs/i18n.md).
ALTER TABLE newsletters ADD COLUMN variants jsonb NOT NULL DEFAULT '{}'::jsonb;
