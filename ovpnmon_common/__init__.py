"""What both processes share: the schema and its tiers, the meta record, storage, config, time
buckets and the planner, totals and formatting (docs/architecture.md)."""

__version__ = "0.1.0"
