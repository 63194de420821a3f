"""The collectors' status (meta, hosts, sources): its one decoder, against what they write."""

from ovpnmon_common import meta, schema
from ovpnmon_common.storage import engines, migrations


def test_status_decodes_what_the_collectors_write(tmp_path):
    engine = engines.writer_engine(str(tmp_path / "m.db"))
    migrations.init_db(engine)
    with engine.begin() as conn:
        assert meta.read_status(conn) == meta.CollectorStatus(schema_version=schema.SCHEMA_VERSION)
        one = meta.register_host(conn, "vpn1.example.org", 500)
        assert meta.register_host(conn, "vpn1.example.org", 600) == one  # the same host
        meta.put_host(conn, one, heartbeat=1000, interval=10, certificates_scanned_at=900)
        health = meta.encode_health({"state": "ok", "since": 5})
        meta.put_sources(conn, one, "health", {"a.b": health})
        meta.put_sources(conn, one, "first_watched", {"a.b": 7})
        meta.put_many(conn, {meta.watermark_key("hourly"): "3600"})
        status = meta.read_status(conn)
        assert meta.watermarks(conn) == {"hourly": 3600}
        assert meta.source_values(conn, one, "first_watched") == {"a.b": 7}
        meta.delete_sources(conn, one, ["a.b"])
        assert meta.read_status(conn).sources == {}
        two = meta.register_host(conn, "vpn2", 700)
        meta.put_host(conn, two, heartbeat=990, interval=30)
        meta.put_sources(conn, two, "health", {"udp": health})
        meta.put_sources(conn, one, "health", {"udp": health})
        fleet = meta.read_status(conn)
    engines.close_writer(engine)
    host = meta.HostStatus(
        one,
        "vpn1.example.org",
        heartbeat=1000,
        interval=10,
        certificates_scanned_at=900,
        sources={"a.b": {"state": "ok", "since": 5}},  # a dotted source name stays whole
    )
    assert status == meta.CollectorStatus(
        hosts={"vpn1.example.org": host},
        watermarks={"hourly": 3600},
        schema_version=schema.SCHEMA_VERSION,
    )
    assert (status.heartbeat, status.interval, status.certificates_scanned_at) == (1000, 10, 900)
    assert status.sources == {"a.b": {"state": "ok", "since": 5}}
    # two hosts: the newest heartbeat, the longest interval, sources named host/source
    assert two != one and (fleet.heartbeat, fleet.interval) == (1000, 30)
    assert sorted(fleet.sources) == ["vpn1.example.org/udp", "vpn2/udp"]
    assert fleet.heartbeats() == {one: 1000, two: 990}
    assert fleet.host_id("vpn2") == two and fleet.host_id("vpn3") is None
