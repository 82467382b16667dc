-- Delivery: when an e-mail failed (for `notifier outbox retry --since`), and a due index per queue
-- so a service claim never scans past a newsletter backlog of another queue.

ALTER TABLE emails ADD COLUMN failed_at timestamptz;

CREATE INDEX emails_queue_due_idx ON emails (queue, next_attempt_at, id)
    WHERE status IN ('queued', 'sending');
CREATE INDEX emails_failed_at_idx ON emails (failed_at) WHERE status = 'failed';
