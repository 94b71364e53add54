"""Monitoring HTTP application: devices, their current values and the readings archive."""
