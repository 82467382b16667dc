-- Digests: the scheduler's safety net for members on "immediate" finds those with no due time
-- quickly (it runs with every pass), and a digest's messages are found by digest id.

CREATE INDEX accounts_immediate_idle_idx ON accounts (id)
    WHERE digest_frequency = 'immediate' AND next_digest_at IS NULL;
CREATE INDEX messages_digest_idx ON messages (digest_id) WHERE digest_id IS NOT NULL;
