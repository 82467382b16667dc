-- Worker liveness (notifier.heartbeat).

-- name: worker_beat
INSERT INTO worker_heartbeats (worker) VALUES ($1)
ON CONFLICT (worker) DO UPDATE SET beat_at = now(), beats = worker_heartbeats.beats + 1
RETURNING beats;
