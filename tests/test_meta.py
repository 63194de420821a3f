"""The meta table's one decoder, against what the collector writes."""

from ovpnmon_common import meta, schema
from ovpnmon_common.storage import engines, migrations


def test_status_decodes_what_the_collector_writes(tmp_path):
    engine = engines.writer_engine(str(tmp_path / "m.db"))
    migrations.init_db(engine)
    with engine.begin() as conn:
        assert meta.read_status(conn) == meta.CollectorStatus(schema_version=schema.SCHEMA_VERSION)
        meta.put_many(
            conn,
            {
                meta.HEARTBEAT: "1000",
                meta.INTERVAL: "10",
                meta.health_key("a.b"): meta.encode_health({"state": "ok", "since": 5}),
                meta.first_watched_key("a.b"): "7",
                meta.watermark_key("hourly"): "3600",
                meta.CERTIFICATES_SCANNED: "900",
            },
        )
        status = meta.read_status(conn)
        assert meta.watermarks(conn) == {"hourly": 3600}
        meta.delete(conn, [meta.health_key("a.b")])
        assert meta.read_status(conn).sources == {}
    engines.close_writer(engine)
    assert status == meta.CollectorStatus(
        heartbeat=1000,
        interval=10,
        sources={"a.b": {"state": "ok", "since": 5}},  # a dotted source name stays whole
        watermarks={"hourly": 3600},
        schema_version=schema.SCHEMA_VERSION,
        certificates_scanned_at=900,
    )
