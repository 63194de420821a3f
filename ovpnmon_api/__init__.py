"""The ovpnmon HTTP API: a read-only Falcon app over the collector's database."""
