"""The simulator engine: hardware, workload, scenario loading, run loop, statistics and reports."""
