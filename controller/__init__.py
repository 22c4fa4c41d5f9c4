"""The daemon: watch, work queue, state store, API, CLI wiring."""
