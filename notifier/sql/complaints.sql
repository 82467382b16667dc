-- The console's bounce and complaint figures (notifier.console.complaints).

-- name: console_feedback_per_day
-- Per UTC day of the last $2 days up to $1: e-mails sent, bounced and complained about (from the
-- events), and the complaint rate against sent, the figure Gmail and Yahoo hold senders to.
SELECT d.day::date AS day,
       count(ev.id) FILTER (WHERE ev.kind = 'sent') AS sent,
       count(ev.id) FILTER (WHERE ev.kind = 'bounced') AS bounced,
       count(ev.id) FILTER (WHERE ev.kind = 'complained') AS complained
FROM generate_series(date_trunc('day', $1::timestamptz AT TIME ZONE 'UTC') - ($2 - 1) * interval '1 day',
                     date_trunc('day', $1::timestamptz AT TIME ZONE 'UTC'), interval '1 day') AS d(day)
LEFT JOIN events ev ON ev.kind IN ('sent', 'bounced', 'complained')
    AND ev.created_at >= d.day AT TIME ZONE 'UTC' AND ev.created_at < (d.day + interval '1 day') AT TIME ZONE 'UTC'
GROUP BY d.day
ORDER BY d.day DESC
