"""Simulated field devices for tests, demos and load measurements."""
