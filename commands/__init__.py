"""The write side: aggregates, command handlers and the coordinator.

Each aggregate module (`project`, `dataset`, `run`) folds its stream into
state and decides events with pure functions; `handlers` loads the streams,
asks the deciders and appends what they decide, with the stream versions it
read as expected versions.
"""
