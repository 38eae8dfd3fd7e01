"""Hardware: device discovery, the capability table and workload placement (no Ray here)."""
