-- The deliverability loop (issue 15): a suppression reason for the soft-bounce rule, and an index
-- that counts an address's temporary failures (events carry the address's sha256, never the address).

ALTER TABLE suppressions DROP CONSTRAINT IF EXISTS suppressions_reason_check;
ALTER TABLE suppressions ADD CONSTRAINT suppressions_reason_check
    CHECK (reason IN ('unsubscribed', 'hard_bounce', 'soft_bounce', 'complaint', 'manual', 'erased'));

CREATE INDEX events_soft_bounce_idx ON events ((detail->>'recipient_hash'), created_at)
    WHERE kind = 'bounced' AND detail->>'type' = 'soft';
