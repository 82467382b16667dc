"""Queue names, by urgency: service mail never waits behind a newsletter."""

SERVICE = "notifier:service"  # service messages, immediate notifications, crons
DIGEST = "notifier:digest"  # scheduled digests
BULK = "notifier:bulk"  # newsletters

ALL = {"service": SERVICE, "digest": DIGEST, "bulk": BULK}
