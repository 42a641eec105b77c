"""Rented machines through SkyPilot: a cluster's lifecycle and bill, managed jobs, the
standalone task files' run, and the buckets that keep results."""
