-- The inbox's created_at index also holds the message id, so that a lookup of one message by its
-- key (id and created_at, as the digest pass, delivery and the member API make them) finds exactly
-- that row whichever of the two indexes PostgreSQL picks.
--
-- Before: `messages_created_idx (created_at)` beside the primary key (id, created_at). With
-- statistics that describe created_at as nearly unique (an ANALYZE while messages came one at a
-- time), the planner may probe a message by the created_at index and filter on id; a batch intake
-- gives up to 1,000 messages the same created_at (one transaction's now()), so each probe then read
-- a thousand rows: a digest pass over 10,000 members with 20 such messages each ran for minutes
-- instead of seconds (issue 16's stalled pass; tests/test_digest_load.py covers it with stale
-- statistics).
--
-- The index is built on every month partition inside this migration's transaction: intake waits
-- while it builds (CHANGELOG.md says how long).

CREATE INDEX messages_created_id_idx ON messages (created_at, id);
DROP INDEX messages_created_idx;
