"""Forecasts and recommendations over HTTP (analytics issue, items 2 and 4)."""
