"""Shared pieces of ovpnmon: schema, config, time buckets and formatting."""

__version__ = "0.1.0"
