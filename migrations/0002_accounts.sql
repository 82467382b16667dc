-- Idempotency records that hold an account's data (a stored response naming the member) belong
-- to that account, so erasing the account erases them too.
ALTER TABLE idempotency_keys
    ADD COLUMN account_id bigint REFERENCES accounts (id) ON DELETE CASCADE;
CREATE INDEX idempotency_account_idx ON idempotency_keys (account_id) WHERE account_id IS NOT NULL;
