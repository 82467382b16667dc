"""Queue names, by urgency: service mail never waits behind a newsletter."""

SERVICE = "notifier:service"  # service messages, immediate notifications, crons
DIGEST = "notifier:digest"  # scheduled digests
BULK = "notifier:bulk"  # newsletters

ALL = {"service": SERVICE, "digest": DIGEST, "bulk": BULK}

# Job names, shared by the code that enqueues a job and the worker that runs it (workers.FUNCTIONS).
DELIVER_JOB = "deliver"  # the doorbell of a queue's outbox rows
NEWSLETTER_START_JOB = "newsletter_start"
SELFTEST_JOB = "selftest"
WEBHOOKS_JOB = "webhooks"  # fan out new events and deliver due webhooks (also run every few seconds)
