-- Newsletters: the frozen audience size, cancellation time, and indexes for fan-out, figures
-- and the audience query.

ALTER TABLE newsletters ADD COLUMN recipients integer;          -- audience frozen when sending started
ALTER TABLE newsletters ADD COLUMN cancelled_at timestamptz;
ALTER TABLE newsletters ADD COLUMN updated_by text;

CREATE INDEX newsletters_due_idx ON newsletters (scheduled_at) WHERE status = 'scheduled';
CREATE INDEX emails_newsletter_status_idx ON emails (newsletter_id, status, next_attempt_at)
    WHERE newsletter_id IS NOT NULL;
CREATE INDEX accounts_newsletter_idx ON accounts (id) WHERE newsletter;
CREATE INDEX consents_topic_idx ON consents (account_id, topic, id DESC);
