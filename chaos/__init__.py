"""The chaos suite: break the engine on purpose (workers SIGKILLed, Redis flushed and restarted,
an SMTP server that refuses, rejects or hangs, PostgreSQL restarted under load) and count what
arrives at a counting SMTP sink. Run with `python -m chaos` (see docs/reliability.md); it is not
collected by the normal pytest run."""
