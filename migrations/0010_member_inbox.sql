-- The member's inbox on the website (issue 13): when the member's bell showed a message (seen_at),
-- and a partial index for the counts the bell asks for on every page view and every event.

ALTER TABLE messages ADD COLUMN seen_at timestamptz;

CREATE INDEX messages_unread_idx ON messages (account_id, category)
    WHERE read_at IS NULL AND archived_at IS NULL;
