"""Running vCPUs: the run loop (loop.py) and its C fast path (fast.py), the
deferred-write queue (deferred.py) and doorbells, exit hooks and tracing,
the exit counters, and how a run stops (stop.py)."""
