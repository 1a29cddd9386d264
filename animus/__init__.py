"""The kernel every unit shares: settings, event store, hash chain, bus, storage,
telemetry, the `animus` CLI and the process supervisor."""
