"""Every read the API makes: SQLAlchemy Core ``select()`` over the tables of ``ovpnmon_common``.

``status`` (the collector's own record and the health verdict), ``clients`` (clients, their open
sessions and totals), ``series`` (traffic over time from the tiers) and ``certificates``.
Statements are built once, at import, with ``bindparam()`` placeholders and run as
``statements.Prepared`` (compiled once per process): a request pays for SQLite's work and its
rows, not for rebuilding queries. Functions take a connection (one transaction per request, so
one consistent snapshot) and return plain Python values; they know nothing of HTTP.
"""
