"""``GET /sessions``: the connection log from the real collector's sessions, newest first, with
filters, keyset pages that hold still while polls add sessions, CSV, and 400s for bad input."""

import base64
import csv
import io

import falcon.testing
import pytest
from conftest import StatusPoller, row

from ovpnmon_api.app import create_app
from ovpnmon_common.config import Config

T0 = 1_795_717_500  # 2026-11-26 18:25:00 UTC


@pytest.fixture
def history(engine, tmp_path):
    h = StatusPoller(engine, tmp_path, T0)
    h.poll(row("alice", 0, T0 + 1, 0, 0), row("=bob", 1, T0 + 2, 0, 0))  # 18:25:00
    h.poll(row("alice", 0, T0 + 1, 500, 50), row("=bob", 1, T0 + 2, 70, 7))
    h.poll(row("=bob", 1, T0 + 2, 90, 9))  # 18:25:20 alice is gone
    # alice reconnects twice at once (duplicate-cn)
    h.poll(
        row("=bob", 1, T0 + 2, 95, 9),
        row("alice", 2, T0 + 25, 30, 3),
        row("alice", 3, T0 + 26, 4, 4),
    )
    h.poll(
        row("=bob", 1, T0 + 2, 99, 9),
        row("alice", 2, T0 + 25, 60, 6),
        row("alice", 3, T0 + 26, 8, 8),
    )
    yield h
    h.close()


def get(app, path="/api/v1/sessions", headers=None, **params):
    return falcon.testing.TestClient(app).simulate_get(path, params=params or None, headers=headers)


@pytest.fixture
def app(history, db_path):
    return create_app(Config(database=db_path), clock=lambda: T0 + 60)


def test_the_log_is_every_connection_newest_first_to_the_second_and_the_byte(app):
    body = get(app).json
    assert body["success"] is True and body["count"] == 4 and body["next_cursor"] is None
    entries = [
        (
            e["common_name"],
            e["connected_since"],
            e["disconnected_at"],
            e["duration_seconds"],
            e["active"],
            e["bytes_received"],
            e["bytes_sent"],
            e["real_address"],
        )
        for e in body["data"]
    ]
    assert entries == [
        ("alice", "2026-11-26 18:25:26", None, 14, True, 8, 8, "127.0.0.1:40003"),
        ("alice", "2026-11-26 18:25:25", None, 15, True, 60, 6, "127.0.0.1:40002"),
        ("=bob", "2026-11-26 18:25:02", None, 38, True, 99, 9, "127.0.0.1:40001"),
        # alice's first session: last seen at the 18:25:10 poll, gone at the 18:25:20 one
        (
            "alice",
            "2026-11-26 18:25:01",
            "2026-11-26 18:25:20",
            19,
            False,
            500,
            50,
            "127.0.0.1:40000",
        ),
    ]
    first = body["data"][0]
    assert first["source"] == "udp" and first["virtual_address"] == "10.98.0.5"
    assert first["last_seen"] == "2026-11-26 18:25:40" and first["bytes_total"] == 16
    # the bytes add up to each client's lifetime totals
    for name in ("alice", "=bob"):
        totals = get(app, f"/api/v1/clients/{name}/stats").json["data"]["totals"]
        rows = [e for e in body["data"] if e["common_name"] == name]
        assert sum(e["bytes_received"] for e in rows) == totals["received_bytes"]
        assert sum(e["bytes_sent"] for e in rows) == totals["sent_bytes"]


def test_filters(app):
    def names(**params):
        return [
            (e["common_name"], e["connected_since"][-2:]) for e in get(app, **params).json["data"]
        ]

    assert names(common_name="alice") == [("alice", "26"), ("alice", "25"), ("alice", "01")]
    assert names(active="no") == [("alice", "01")]
    assert names(active="yes", common_name="alice") == [("alice", "26"), ("alice", "25")]
    assert names(source="tcp") == []
    # overlapping a window: connected before its end, not gone before its start
    assert names(to="2026-11-26 18:25:02") == [("alice", "01")]
    assert names(**{"from": "2026-11-26 18:25:21"}) == [
        ("alice", "26"),
        ("alice", "25"),
        ("=bob", "02"),
    ]
    # per client, also for a name a formula would start with
    per_client = get(app, "/api/v1/clients/%3Dbob/sessions").json["data"]
    assert [e["common_name"] for e in per_client] == ["=bob"]


def test_pages_walk_the_whole_log_and_hold_still_while_sessions_arrive(app, history):
    first = get(app, limit="2").json
    assert first["count"] == 2 and first["next_cursor"]
    # a new session arrives between two pages: it lands before page one, not inside page two
    history.poll(row("=bob", 1, T0 + 2, 99, 9), row("carol", 4, T0 + 45, 1, 1))
    second = get(app, limit="2", cursor=first["next_cursor"]).json
    assert second["next_cursor"] is None
    walked = [e["id"] for e in first["data"] + second["data"]]
    everything = [e["id"] for e in get(app).json["data"]]
    assert everything[0] not in walked and walked == everything[1:]


@pytest.mark.parametrize("active", ["yes", "no", None])
def test_pages_of_one_equal_the_whole_log_with_every_active_filter(app, active):
    params = {"active": active} if active else {}
    whole = [e["id"] for e in get(app, **params).json["data"]]
    walked, cursor = [], None
    while True:
        body = get(app, limit="1", **params, **({"cursor": cursor} if cursor else {})).json
        walked += [e["id"] for e in body["data"]]
        if (cursor := body["next_cursor"]) is None:
            break
    assert walked == whole and len(whole) == {"yes": 3, "no": 1, None: 4}[active]


@pytest.mark.sqlite_only  # SQLite's query plan
def test_open_sessions_are_read_through_their_partial_index(engine):
    from ovpnmon_api.read.sessions import statement
    from ovpnmon_common.storage.statements import _compiled

    for after in (False, True):
        query = statement(False, False, False, False, False, True, after)
        with engine.connect() as conn:
            sql, constants = _compiled(conn, query.stmt, ())
            values = {**constants, "since": T0, "id": 9, "limit": 101}
            plan = " ".join(map(str, conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, values)))
        assert "ix_sessions_open" in plan and "ix_sessions_connected_since" not in plan


@pytest.mark.parametrize(
    "params, message",
    [
        ({"limit": "1001"}, "limit must be a whole number from 1 to 1000; got '1001'"),
        ({"limit": "0"}, "limit must be a whole number from 1 to 1000"),
        ({"limit": "ten"}, "limit must be a whole number from 1 to 1000"),
        ({"active": "maybe"}, "active must be yes or no; got 'maybe'"),
        ({"from": "2026-11-27", "to": "2026-11-26"}, "from (2026-11-27) must be before to"),
        ({"to": "tomorrow"}, "to must be YYYY-MM-DD"),
        ({"cursor": "bm9wZQ"}, "cursor is not one this API returned for these filters"),
        ({"format": "pdf"}, "format must be json or csv"),
        ({"period": "2026-11"}, "unknown query parameter 'period'"),
    ],
)
def test_bad_input_is_a_400_naming_what_is_accepted(app, params, message):
    result = get(app, **params)
    assert result.status_code == 400
    assert result.json == {"success": False, "error": result.json["error"]}
    assert message in result.json["error"]


def test_a_forged_or_foreign_cursor_is_refused(app):
    cursor = get(app, limit="1").json["next_cursor"]
    since, sid, digest = base64.urlsafe_b64decode(cursor + "==").decode().split(".")
    forged = base64.urlsafe_b64encode(f"{since}.{int(sid) - 1}.{digest}".encode()).decode()
    for params in (
        {"cursor": forged},
        {"cursor": cursor[:-2]},
        {"cursor": cursor, "active": "yes"},
    ):
        result = get(app, limit="1", **params)
        assert result.status_code == 400, params
        assert "cursor is not one this API returned" in result.json["error"]
    assert get(app, limit="1", cursor=cursor).status_code == 200


def test_unknown_client_is_a_404(app):
    result = get(app, "/api/v1/clients/nobody/sessions")
    assert result.status_code == 404 and "no client named 'nobody'" in result.json["error"]


def csv_pages(app, link):
    """Every CSV page from ``link`` on, following each ``Link: <...>; rel="next"``."""
    pages = []
    while link:
        path, _, query = link.partition("?")
        result = falcon.testing.TestClient(app).simulate_get(path, query_string=query)
        assert result.status_code == 200, result.text
        pages.append(list(csv.DictReader(io.StringIO(result.text, newline=""))))
        header = result.headers.get("link")
        link = header.removeprefix("<").removesuffix('>; rel="next"') if header else None
    return pages


def test_a_csv_page_links_to_the_next_and_the_pages_add_up_to_the_log(app):
    whole = list(csv.DictReader(io.StringIO(get(app, format="csv").text, newline="")))
    pages = csv_pages(app, "/api/v1/sessions?format=csv&limit=1")
    assert [row for page in pages for row in page] == whole and len(pages) == len(whole) == 4
    # the link keeps the filters: the open sessions only
    pages = csv_pages(app, "/api/v1/sessions?format=csv&limit=2&active=yes")
    assert [len(page) for page in pages] == [2, 1]
    assert [row for page in pages for row in page] == [r for r in whole if r["active"] == "true"]


def test_csv_parsed_back_equals_json(app):
    body = get(app).json
    result = get(app, headers={"Accept": "text/csv"})
    assert result.headers["content-type"] == "text/csv; charset=utf-8; header=present"
    assert result.text.endswith("\r\n") and "\n" not in result.text.replace("\r\n", "")
    rows = list(csv.DictReader(io.StringIO(result.text, newline="")))
    assert [r["common_name"] for r in rows] == ["alice", "alice", "'=bob", "alice"]
    for parsed, entry in zip(rows, body["data"], strict=True):
        for key, value in entry.items():
            text = parsed[key]
            if value is None:
                assert text == ""
            elif isinstance(value, bool):
                assert text == str(value).lower()
            elif isinstance(value, int):
                assert int(text) == value
            else:
                assert text.removeprefix("'") == value
