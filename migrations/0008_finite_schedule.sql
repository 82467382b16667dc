-- A send time of year 1 was stored as -infinity (issue 17): the newsletter went out at once and
-- every later list of newsletters failed to read it. The API now bounds every date input; the
-- rows already written get their creation time, and the column refuses an infinite time.
UPDATE newsletters SET scheduled_at = created_at WHERE NOT isfinite(scheduled_at);
ALTER TABLE newsletters ADD CONSTRAINT newsletters_scheduled_at_finite CHECK (isfinite(scheduled_at));
