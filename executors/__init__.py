"""The data plane: consumes launches, runs workloads, reports what happened.

Never imports `commands`, `projections` or `gateway` (checked by
import-linter): governance code must not become an execution path.
"""
