-- name: import_start
-- Returns the import's id and the transaction's time (new members' digest windows open then).
INSERT INTO imports (actor_type, actor, source) VALUES ($1, $2, $3) RETURNING id, started_at;

-- name: import_duplicates
-- A second row for the same external_id is refused (the first one counts), naming the first row.
-- Returns how many rows were refused.
WITH numbered AS (
    SELECT row_no, min(row_no) OVER (PARTITION BY external_id) AS first_row
    FROM import_rows WHERE import_id = $1
), moved AS (
    DELETE FROM import_rows r USING numbered n
    WHERE r.import_id = $1 AND r.row_no = n.row_no AND n.row_no <> n.first_row
    RETURNING r.row_no, n.first_row
), reported AS (
    INSERT INTO import_errors (import_id, row_no, field, reason)
    SELECT $1, row_no, 'external_id', format('appears again (first on row %s)', first_row) FROM moved
)
SELECT count(*)::int FROM moved;

-- name: import_incomplete
-- A row for a member not yet known must give an e-mail address and a name. Returns how many rows
-- were refused.
WITH moved AS (
    DELETE FROM import_rows r
    WHERE r.import_id = $1 AND (r.email IS NULL OR r.name IS NULL)
      AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.external_id = r.external_id)
    RETURNING r.row_no, r.email IS NULL AS no_email, r.name IS NULL AS no_name
), reported AS (
    INSERT INTO import_errors (import_id, row_no, field, reason)
    SELECT $1, m.row_no, f.field, 'is required for a new member'
    FROM moved m, LATERAL (VALUES ('email', m.no_email), ('name', m.no_name)) AS f (field, missing)
    WHERE f.missing
)
SELECT count(*)::int FROM moved;

-- name: import_update
-- Members already known: correct the fields the file gives that differ, audit each correction
-- with its before/after (as `accounts.correct` does), and count matched and updated rows. Only
-- rows that differ are locked (locking every matched row would write each one, unchanged or not);
-- the difference is taken again on the locked, latest version. Returns the ids whose time zone
-- moved (their digest window follows, in Python).
-- $2, $3, $4: the audit actor's type, name and console user (NULL unless a console user).
WITH joined AS (
    SELECT a.id, r.email, r.name, r.timezone, r.locale, r.attributes::jsonb AS attributes,
           (a.email, a.name, a.timezone, a.locale, a.attributes) IS DISTINCT FROM
           (coalesce(r.email, a.email), coalesce(r.name, a.name),
            coalesce(r.timezone, a.timezone), coalesce(r.locale, a.locale),
            a.attributes || coalesce(r.attributes::jsonb, '{}')) AS differs
    FROM import_rows r JOIN accounts a ON a.external_id = r.external_id
    WHERE r.import_id = $1
), src AS (
    SELECT a.id, a.email AS e0, a.name AS n0, a.timezone AS t0, a.locale AS l0, a.attributes AS x0,
           coalesce(j.email, a.email) AS e1, coalesce(j.name, a.name) AS n1,
           coalesce(j.timezone, a.timezone) AS t1, coalesce(j.locale, a.locale) AS l1,
           a.attributes || coalesce(j.attributes, '{}') AS x1
    FROM accounts a JOIN joined j ON j.id = a.id AND j.differs
    FOR UPDATE OF a
), changed AS (
    SELECT id, e1, n1, t1, l1, x1, t0 <> t1 AS moved,
           CASE WHEN e0 <> e1 THEN jsonb_build_object('email', jsonb_build_object('before', e0, 'after', e1)) ELSE '{}' END
        || CASE WHEN n0 <> n1 THEN jsonb_build_object('name', jsonb_build_object('before', n0, 'after', n1)) ELSE '{}' END
        || CASE WHEN t0 <> t1 THEN jsonb_build_object('timezone', jsonb_build_object('before', t0, 'after', t1)) ELSE '{}' END
        || CASE WHEN l0 <> l1 THEN jsonb_build_object('locale', jsonb_build_object('before', l0, 'after', l1)) ELSE '{}' END
        || CASE WHEN x0 <> x1 THEN jsonb_build_object('attributes', jsonb_build_object('before', x0, 'after', x1)) ELSE '{}' END
           AS changes
    FROM src
    WHERE (e0, n0, t0, l0, x0) IS DISTINCT FROM (e1, n1, t1, l1, x1)
), updated AS (
    UPDATE accounts a SET email = c.e1, name = c.n1, timezone = c.t1, locale = c.l1, attributes = c.x1,
                          updated_at = now()
    FROM changed c WHERE a.id = c.id
    RETURNING a.id
), audited AS (
    INSERT INTO audit_log (account_id, actor_type, actor, action, changes, console_user_id)
    SELECT id, $2, $3, 'account.updated', changes, $4 FROM changed
)
SELECT (SELECT count(*) FROM joined)::int AS matched,
       (SELECT count(*) FROM updated)::int AS updated,
       (SELECT coalesce(array_agg(id), '{}') FROM changed WHERE moved) AS moved;

-- name: import_insert
-- Members not yet known: register them with the file's time zone and locale (else $4, $5, the
-- API's defaults) and the default schedule ($6-$8), their first digest window open from now to
-- the end computed for their time zone ($9, $10: the staged rows' zones and those ends), and audit each as
-- `accounts.create_account` does ($2, $3, $11: the actor's type, name and console user). Returns
-- how many were registered.
WITH inserted AS (
    INSERT INTO accounts (external_id, email, name, timezone, locale, attributes,
                          digest_frequency, digest_hour, digest_weekday, digest_window_start, next_digest_at)
    SELECT r.external_id, r.email, r.name, coalesce(r.timezone, $4), coalesce(r.locale, $5),
           coalesce(r.attributes::jsonb, '{}'), $6, $7, $8, transaction_timestamp(), d.due
    FROM import_rows r
    LEFT JOIN unnest($9::text[], $10::timestamptz[]) AS d (timezone, due) ON d.timezone = coalesce(r.timezone, $4)
    WHERE r.import_id = $1
      AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.external_id = r.external_id)
    ON CONFLICT (external_id) DO NOTHING
    RETURNING id, external_id, email, name, timezone, locale, attributes
), audited AS (
    INSERT INTO audit_log (account_id, actor_type, actor, action, changes, console_user_id)
    SELECT id, $2, $3, 'account.created', jsonb_build_object(
        'external_id', jsonb_build_object('before', NULL, 'after', external_id),
        'email', jsonb_build_object('before', NULL, 'after', email),
        'name', jsonb_build_object('before', NULL, 'after', name),
        'timezone', jsonb_build_object('before', NULL, 'after', timezone),
        'locale', jsonb_build_object('before', NULL, 'after', locale))
        || CASE WHEN attributes <> '{}' THEN jsonb_build_object(
               'attributes', jsonb_build_object('before', NULL, 'after', attributes)) ELSE '{}' END, $11
    FROM inserted
)
SELECT count(*)::int FROM inserted;

-- name: import_moved_windows
-- The schedules of accounts whose time zone the import corrected (`preferences.follow_timezone`).
SELECT id, digest_frequency, digest_hour, digest_weekday, timezone, digest_window_start
FROM accounts WHERE id = ANY($1::bigint[]) AND next_digest_at IS NOT NULL;

-- name: import_move_windows
UPDATE accounts a SET next_digest_at = m.due
FROM unnest($1::bigint[], $2::timestamptz[]) AS m (id, due)
WHERE a.id = m.id;

-- name: import_opt_in
-- Opt the imported members in to the newsletter (the default list) with the consent wording
-- ($4, $5) and source `import`, as `preferences.apply_preferences` records an opt-in (audited as
-- $2, $3, $6); members who ever opted out are left out (an import must not overrule a member's
-- own choice) and counted.
WITH members AS (
    SELECT a.id, a.newsletter,
           EXISTS (SELECT 1 FROM consents c
                   WHERE c.account_id = a.id AND c.topic = 'newsletter' AND NOT c.granted) AS refused
    FROM import_rows r JOIN accounts a ON a.external_id = r.external_id
    WHERE r.import_id = $1
), updated AS (
    UPDATE accounts a SET newsletter = true, updated_at = now()
    FROM members m WHERE a.id = m.id AND NOT m.newsletter AND NOT m.refused
    RETURNING a.id
), consented AS (
    INSERT INTO consents (account_id, topic, granted, source, wording, wording_version, list_id)
    SELECT id, 'newsletter', true, 'import', $4, $5, (SELECT id FROM lists WHERE is_default) FROM updated
), audited AS (
    INSERT INTO audit_log (account_id, actor_type, actor, action, changes, console_user_id)
    SELECT id, $2, $3, 'preferences.update',
           '{"newsletter": {"before": false, "after": true}, "source": "import"}'::jsonb, $6
    FROM updated
)
SELECT (SELECT count(*) FROM updated)::int AS opted_in,
       (SELECT count(*) FROM members WHERE NOT newsletter AND refused)::int AS kept_out;

-- name: import_failed_count
SELECT count(DISTINCT row_no)::int FROM import_errors WHERE import_id = $1;

-- name: import_error_report
SELECT row_no, field, reason FROM import_errors WHERE import_id = $1 ORDER BY row_no, field;

-- name: import_finish
-- The staging rows go in the transaction that wrote them; the history keeps the counts only.
WITH gone_rows AS (
    DELETE FROM import_rows WHERE import_id = $1
), gone_errors AS (
    DELETE FROM import_errors WHERE import_id = $1
)
UPDATE imports
SET created = $2, updated = $3, unchanged = $4, failed = $5, opted_in = $6, finished_at = now()
WHERE id = $1;

-- name: recent_imports
SELECT id, actor_type, actor, source, created, updated, unchanged, failed, opted_in, started_at, finished_at
FROM imports ORDER BY id DESC LIMIT $1;

-- name: import_list_opt_in
-- The same for another list ($4, its key $7): membership, a consent row naming the list, an audit
-- row `lists.update` ($2, $3, $8: the actor's type, name and console user); members who ever left
-- that list are left out and counted. On a list with
-- double opt-in an imported member counts once confirmed, as any other opt-in to it.
WITH members AS (
    SELECT a.id, coalesce(lm.subscribed, false) AS subscribed,
           EXISTS (SELECT 1 FROM consents c
                   WHERE c.account_id = a.id AND c.list_id = $4 AND NOT c.granted) AS refused
    FROM import_rows r
    JOIN accounts a ON a.external_id = r.external_id
    LEFT JOIN list_members lm ON lm.list_id = $4 AND lm.account_id = a.id
    WHERE r.import_id = $1
), updated AS (
    INSERT INTO list_members (list_id, account_id, subscribed)
    SELECT $4, id, true FROM members WHERE NOT subscribed AND NOT refused
    ON CONFLICT (list_id, account_id) DO UPDATE SET subscribed = true, updated_at = now()
    RETURNING account_id AS id
), consented AS (
    INSERT INTO consents (account_id, topic, granted, source, wording, wording_version, list_id)
    SELECT id, 'list', true, 'import', $5, $6, $4 FROM updated
), audited AS (
    INSERT INTO audit_log (account_id, actor_type, actor, action, changes, console_user_id)
    SELECT id, $2, $3, 'lists.update',
           jsonb_build_object($7::text, jsonb_build_object('before', false, 'after', true), 'source', 'import'),
           $8
    FROM updated
)
SELECT (SELECT count(*) FROM updated)::int AS opted_in,
       (SELECT count(*) FROM members WHERE NOT subscribed AND refused)::int AS kept_out;
