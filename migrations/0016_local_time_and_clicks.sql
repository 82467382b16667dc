-- Newsletters sent at each member's local time, and clicks counted without tracking people
-- (docs/newsletters.md).
--
-- Local time: the send names a wall-clock time and a date; each recipient row of such a send
-- waits (`status = 'waiting'`, invisible to the outbox's claims) until its `due_at`, that time on
-- that date in the member's time zone, when a release pass makes it `queued`.
ALTER TABLE newsletters ADD COLUMN local_time time;
ALTER TABLE newsletters ADD COLUMN local_date date;
ALTER TABLE newsletters ADD CONSTRAINT newsletters_local_time_both
    CHECK ((local_time IS NULL) = (local_date IS NULL));

ALTER TABLE emails DROP CONSTRAINT emails_status_check;
ALTER TABLE emails ADD CONSTRAINT emails_status_check
    CHECK (status IN ('waiting', 'queued', 'sending', 'sent', 'failed', 'suppressed', 'cancelled'));
ALTER TABLE emails ADD COLUMN due_at timestamptz;
CREATE INDEX emails_waiting_due_idx ON emails (due_at) WHERE status = 'waiting';

-- Clicks: a newsletter's links are numbered when it starts sending; a click is one more in the
-- counter of (newsletter, link, day). Nothing names a member: no account, address, IP, cookie.
ALTER TABLE newsletters ADD COLUMN track_clicks boolean NOT NULL DEFAULT false;

CREATE TABLE newsletter_links (
    newsletter_id bigint NOT NULL REFERENCES newsletters (id) ON DELETE CASCADE,
    link          integer NOT NULL CHECK (link >= 0),
    url           text NOT NULL,
    PRIMARY KEY (newsletter_id, link)
);

CREATE TABLE link_clicks (
    newsletter_id bigint NOT NULL,
    link          integer NOT NULL,
    day           date NOT NULL,
    clicks        bigint NOT NULL DEFAULT 0 CHECK (clicks >= 0),
    PRIMARY KEY (newsletter_id, link, day),
    FOREIGN KEY (newsletter_id, link) REFERENCES newsletter_links (newsletter_id, link) ON DELETE CASCADE
);
