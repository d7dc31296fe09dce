"""The simulated xe GPU: devices, regions, buffer objects, placement and eviction."""
