"""MIMetric (being written)."""
