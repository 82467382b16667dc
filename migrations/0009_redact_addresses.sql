-- Bounce texts stored before issue 17 could quote the recipient's address (`550 5.1.1
-- <jo@example.org>: User unknown`) in the suppression list (meant to hold hashes only), in events
-- and in the outbox's last error. Replace every address-shaped run with `[address]`, as
-- notifier.smtp_reply.redact now does before anything is stored. The pattern leaves JSON valid: it
-- never spans a quote or a backslash.
UPDATE suppressions
SET detail = regexp_replace(detail, '[^\s<>()\[\]"'',;:@\\]+@[^\s<>()\[\]"'',;:@\\]+', '[address]', 'g')
WHERE detail LIKE '%@%';

UPDATE events
SET detail = regexp_replace(detail::text, '[^\s<>()\[\]"'',;:@\\]+@[^\s<>()\[\]"'',;:@\\]+', '[address]', 'g')::jsonb
WHERE detail::text LIKE '%@%';

UPDATE emails
SET last_error = regexp_replace(last_error, '[^\s<>()\[\]"'',;:@\\]+@[^\s<>()\[\]"'',;:@\\]+', '[address]', 'g')
WHERE last_error LIKE '%@%';

-- An erasure notice that failed before this change kept its address, data and key "so that an
-- operator could re-drive it"; the member asked to be forgotten.
UPDATE emails
SET to_address = '[erased]', subject = NULL, context = '{}'::jsonb, idempotency_key = NULL
WHERE account_id IS NULL AND kind = 'service' AND status = 'failed';
