-- The audit trail (notifier.audit): rows are only ever inserted.

-- name: insert_audit
INSERT INTO audit_log (account_id, actor_type, actor, action, changes, console_user_id)
VALUES ($1, $2, $3, $4, $5, $6);
