"""Feeding training loops: samplers (which regions an epoch reads) and the loader core."""
