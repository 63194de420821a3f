import datetime as dt

import pytest
from conftest import fixture_text
from hypothesis import given, settings
from hypothesis import strategies as st

from ovpnmon_collector.accounting import session_key
from ovpnmon_collector.parser import parse_status
from ovpnmon_collector.snapshot import IncompleteStatus, SessionRow, StatusError
from ovpnmon_collector.status_fast import parse_fast
from ovpnmon_collector.status_lines import parse_lines

UTC = dt.timezone.utc


def by_key(snapshot):
    return {session_key(s.client_id, s.real_address): s for s in snapshot.sessions}


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("v1_duplicate_cn_three_sessions.txt", 1),
        ("v2_duplicate_cn_three_sessions.txt", 2),
        ("v3_duplicate_cn_three_sessions.txt", 3),
        ("management_status3_crlf.txt", 3),
    ],
)
def test_real_output_of_every_format(name, version):
    snapshot = parse_status(fixture_text(name), local_tz=UTC)
    assert snapshot.version == version
    names = sorted(s.common_name for s in snapshot.sessions)
    assert names == ["alice", "bob", "bob"]
    assert all(s.bytes_received > 1000 and s.bytes_sent > 1000 for s in snapshot.sessions)
    assert all(s.real_address.startswith("127.0.0.1:") for s in snapshot.sessions)
    assert all(s.virtual_address.startswith("10.98.0.") for s in snapshot.sessions)
    keys = {session_key(s.client_id, s.real_address) for s in snapshot.sessions}
    assert len(keys) == 3  # the two bob sessions stay apart
    assert snapshot.time is not None


def test_v2_takes_connected_since_from_time_t():
    snapshot = parse_status(fixture_text("v2_duplicate_cn_three_sessions.txt"))
    alice = next(s for s in snapshot.sessions if s.common_name == "alice")
    assert alice == SessionRow(
        common_name="alice",
        real_address="127.0.0.1:35367",
        virtual_address="10.98.0.2",
        virtual_ipv6="",
        bytes_received=1888,
        bytes_sent=1963,
        connected_since=1795717426,
        client_id=0,
    )
    assert session_key(alice.client_id, alice.real_address) == "id:0"
    assert snapshot.time == 1795717429


def test_v1_identity_is_real_address_and_dates_are_server_local():
    text = fixture_text("v1_duplicate_cn_three_sessions.txt")
    utc = parse_status(text, local_tz=UTC)
    berlin = parse_status(text, local_tz=dt.timezone(dt.timedelta(hours=1)))
    alice = next(s for s in utc.sessions if s.common_name == "alice")
    assert alice.client_id is None
    assert session_key(alice.client_id, alice.real_address) == "addr:127.0.0.1:59980"
    assert alice.connected_since == int(
        dt.datetime(2026, 11, 26, 18, 23, 42, tzinfo=UTC).timestamp()
    )
    assert utc.sessions[0].connected_since - berlin.sessions[0].connected_since == 3600


def test_ctime_dates_of_older_versions():
    snapshot = parse_status(fixture_text("v1_ctime_dates_openvpn24.txt"), local_tz=UTC)
    sessions = {s.common_name: s for s in snapshot.sessions}
    assert sessions["alice"].connected_since == int(
        dt.datetime(2026, 11, 5, 3, 23, 5, tzinfo=UTC).timestamp()
    )
    assert sessions["bob"].connected_since == int(
        dt.datetime(2026, 11, 4, 23, 59, 59, tzinfo=UTC).timestamp()
    )
    assert snapshot.time == int(dt.datetime(2026, 11, 5, 3, 23, 9, tzinfo=UTC).timestamp())
    assert sessions["alice"].virtual_address == "10.98.0.2"


def test_openvpn27_prefixes_and_bracketed_ipv6():
    snapshot = parse_status(fixture_text("v3_openvpn27_protocol_prefix_bracketed_ipv6.txt"))
    sessions = by_key(snapshot)
    assert sessions["id:0"].real_address == "udp4:198.51.100.7:51820"
    assert sessions["id:1"].real_address == "udp6:[2001:db8::1]:51821"
    assert sessions["id:2"].real_address == "[2001:db8::2]:51822"
    assert sessions["id:1"].virtual_ipv6 == "fd00:98::1001"
    assert sessions["id:2"].virtual_ipv6 == "fd00:98::1002"


def test_ipv6_real_address_without_port():
    sessions = by_key(parse_status(fixture_text("v2_ipv6_real_address_without_port.txt")))
    assert sessions["id:2"].real_address == "2001:db8::5"
    assert sessions["id:2"].virtual_ipv6 == "fd00:98::1002"


def test_v1_several_routes_per_client():
    snapshot = parse_status(fixture_text("v1_several_routes_per_client.txt"), local_tz=UTC)
    alice = next(s for s in snapshot.sessions if s.common_name == "alice")
    assert alice.virtual_address == "10.98.0.2"  # not the iroute subnet listed first
    assert alice.virtual_ipv6 == "fd00:98::1000"


def test_empty_client_list():
    snapshot = parse_status(fixture_text("v2_empty_client_list.txt"))
    assert snapshot.sessions == () and snapshot.version == 2


def test_undef_rows_are_not_users():
    snapshot = parse_status(fixture_text("v3_unauthenticated_undef_row.txt"))
    assert len(snapshot.sessions) == 3
    assert "UNDEF" not in {s.common_name for s in snapshot.sessions}


def test_counters_above_32_bits():
    sessions = by_key(parse_status(fixture_text("v3_counters_above_2_32.txt")))
    assert sessions["id:0"].bytes_received == 5_368_709_120_123
    assert sessions["id:0"].bytes_sent == 4_294_967_296


def test_columns_added_by_newer_versions():
    plain = by_key(parse_status(fixture_text("v3_duplicate_cn_three_sessions.txt")))
    wider = by_key(parse_status(fixture_text("v3_newer_version_extra_columns.txt")))
    assert plain == wider


def test_comma_in_common_name_of_csv_formats():
    text = fixture_text("v2_duplicate_cn_three_sessions.txt").replace(
        "CLIENT_LIST,alice,", "CLIENT_LIST,Smith, Alice,"
    )
    sessions = by_key(parse_status(text))
    assert sessions["id:0"].common_name == "Smith, Alice"
    assert sessions["id:0"].bytes_received == 1888


def test_half_written_file_is_incomplete():
    with pytest.raises(IncompleteStatus, match="no final END line after 6 lines"):
        parse_status(fixture_text("v2_half_written_no_end.txt"))
    with pytest.raises(IncompleteStatus, match="empty status text"):
        parse_status(
            ""
        )  # OpenVPN truncates the file at start and may not write it until a client comes


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: "garbage\n" + t, "line 1: not an OpenVPN server status"),
        (
            lambda t: t.replace(",1888,", ",18x8,"),
            "line 4: Bytes Received is not a whole number: '18x8'",
        ),
        (
            lambda t: t.replace(",1963,", ",-1963,"),
            "line 4: Bytes Sent is not a whole number: '-1963'",
        ),
        (
            lambda t: t.replace("1795717426,UNDEF,0", "soon,UNDEF,0"),
            "line 4: Connected Since (time_t) is not a whole number",
        ),
        (
            lambda t: t.replace(",AES-256-GCM\n", "\n", 1),
            "line 4: 11 fields where the header names 12",
        ),
        (
            lambda t: t.replace("HEADER,CLIENT_LIST,Common Name", "HEADER,CLIENT_LIST,Name"),
            "line 3: CLIENT_LIST header lacks Common Name",
        ),
        (
            lambda t: t.replace("HEADER,CLIENT_LIST", "HEADER,SOMETHING"),
            "line 4: CLIENT_LIST row before its HEADER",
        ),
    ],
)
def test_malformed_input_raises_the_one_documented_error(mutate, message):
    text = mutate(fixture_text("v2_duplicate_cn_three_sessions.txt"))
    with pytest.raises(StatusError) as info:
        parse_status(text)
    assert str(info.value).startswith(message)


def test_v1_bad_date_names_the_line():
    text = fixture_text("v1_duplicate_cn_three_sessions.txt").replace(
        ",2026-11-26 18:23:42\nalice", ",26/11/2026\nalice"
    )
    with pytest.raises(StatusError, match=r"^line 4: unrecognised date '26/11/2026'"):
        parse_status(text)


def test_client_status_file_is_named_as_such():
    with pytest.raises(StatusError, match="an OpenVPN client's status file, not a server's"):
        parse_status(fixture_text("client_status_file.txt"))


# --- the fast path of status-version 2/3 against the line-by-line parser ----------------------

TAGGED_FIXTURES = [
    "v2_duplicate_cn_three_sessions.txt",
    "v3_duplicate_cn_three_sessions.txt",
    "management_status3_crlf.txt",
    "v3_counters_above_2_32.txt",
    "v3_newer_version_extra_columns.txt",
    "v3_openvpn27_protocol_prefix_bracketed_ipv6.txt",
    "v3_unauthenticated_undef_row.txt",
    "v2_empty_client_list.txt",
    "v2_ipv6_real_address_without_port.txt",
]


@pytest.mark.parametrize("name", TAGGED_FIXTURES)
def test_fast_path_takes_real_output_and_agrees(name):
    text = fixture_text(name)
    fast = parse_fast(text, UTC)
    assert fast is not None, "real OpenVPN output should not need the line-by-line parser"
    general = parse_lines(text, UTC)
    assert fast == general
    # what the accounting reads, identities as text: the same whichever path parsed the text
    assert list(fast.rows()) == list(general.rows())
    assert [(r[6], r[7]) for r in fast.rows()] == [
        (str(r.connected_since), None if r.client_id is None else str(r.client_id))
        for r in general.sessions
    ]
    assert len(fast) == len(fast.sessions)


ODD = ["UNDEF", "a,b", "a\tb", "ünï", "٣", "+5", " 7", "1_0", "", "x\ry", "²", "07"]
# mostly well-formed, so that both parsers answer often; sometimes one odd field
FIELD = st.sampled_from(["alice", "bob", "carol", "12", "0"] * 6 + ODD)
NUMBER = st.one_of(*[st.integers(0, 2**64).map(str)] * 8, st.sampled_from(ODD))
LINE = st.one_of(
    st.tuples(st.just("CLIENT_LIST"), FIELD, FIELD, FIELD, FIELD, FIELD, FIELD, FIELD, FIELD),
    st.tuples(st.just("CLIENT_LIST"), FIELD, st.just("127.0.0.1:1"), FIELD, FIELD, st.just("5")),
    st.tuples(st.sampled_from(["ROUTING_TABLE", "TIME", "GLOBAL_STATS", "HEADER"]), FIELD, FIELD),
    st.tuples(st.just("TIME"), st.just("2026-11-26 10:00:00"), NUMBER),
    st.just(("HEADER", "CLIENT_LIST", "Common Name")),
    st.just(("END",)),
)


@given(
    sep=st.sampled_from(["\t", ","]),
    rows=st.lists(st.tuples(FIELD, NUMBER, NUMBER, st.one_of(NUMBER, st.just(""))), max_size=6),
    extra=st.lists(st.tuples(st.integers(0, 8), LINE), max_size=1),
    routes=st.booleans(),
    header_after_rows=st.booleans(),
    line_end=st.sampled_from(["\n", "\n", "\r\n"]),
)
@settings(max_examples=400, deadline=None)
def test_fast_path_never_disagrees_with_the_line_by_line_parser(
    sep, rows, extra, routes, header_after_rows, line_end
):
    lines = [
        "TITLE" + sep + "OpenVPN 2.6.14",
        sep.join(["TIME", "2026-11-26 10:00:00", "1795717500"]),
        sep.join(
            [
                *("HEADER", "CLIENT_LIST", "Common Name", "Real Address", "Virtual Address"),
                *("Bytes Received", "Bytes Sent", "Connected Since", "Connected Since (time_t)"),
                "Client ID",
            ]
        ),
    ]
    for i, (name, rx, since, cid) in enumerate(rows):
        lines.append(
            sep.join(
                [
                    *("CLIENT_LIST", name, f"127.0.0.1:{i}", "10.8.0.2", rx, "7"),
                    *("2026-11-26 09:00:00", since, cid),
                ]
            )
        )
    if header_after_rows:
        lines.append(lines.pop(2))
    if routes:
        lines.append(sep.join(["ROUTING_TABLE", "10.8.0.2", "alice", "127.0.0.1:0", "x", "1"]))
    for at, line in extra:
        lines.insert(min(at, len(lines)), sep.join(line))
    text = line_end.join([*lines, "END", ""])
    try:
        expected = parse_lines(text, UTC)
    except StatusError:
        expected = None
    fast = parse_fast(text, UTC)
    assert fast is None or fast == expected
    if fast is not None:
        assert expected is not None and list(fast.rows()) == list(expected.rows())


def _v3(*body):
    header = "\t".join(
        [
            *("HEADER", "CLIENT_LIST", "Common Name", "Real Address", "Virtual Address"),
            *("Bytes Received", "Bytes Sent", "Connected Since", "Connected Since (time_t)"),
            "Client ID",
        ]
    )
    lines = [line.replace("{header}", header) for line in body]
    return "\n".join(["TITLE\tOpenVPN 2.6.14", *lines, "END", ""])


def _row(name, cid, rx="5"):
    return f"CLIENT_LIST\t{name}\t127.0.0.1:{cid}\t10.8.0.2\t{rx}\t7\t2026-11-26\t1795714000\t{cid}"


TIME = "TIME\t2026-11-26 10:00:00\t1795717500"


@pytest.mark.parametrize(
    ("text", "fast_answers"),
    [
        (_v3(TIME, "{header}", _row("a", 1), _row("b", 2)), True),
        (_v3("{header}", _row("a", 1), TIME), True),  # TIME after the rows
        (_v3(TIME, "{header}", _row("a", 1), "TIME\t2026-11-26 10:00:00\t42"), False),  # last wins
        (_v3(TIME, _row("a", 1), "{header}"), False),  # rows before their header
        (_v3(TIME, "{header}", _row("a", 1), "{header}", _row("b", 2)), False),
        (_v3(TIME, "{header}", _row("a", 1), "ROUTING_TABLE\tx", _row("b", 2)), False),
        (_v3(TIME, "{header}", _row("CLIENT_LIST", 1), _row("b", 2)), False),
        (_v3(TIME, "{header}", _row("CLIENT_LISTS", 1), _row("b", 2)), False),
        # a tag at a line's end lines the fields up for a line that is not a client row at all
        (
            _v3(
                TIME,
                "{header}",
                _row("a", 1) + "\tCLIENT_LIST",
                "x\ty\tz\t1\t2\t3\t4\t5",
                _row("b", 2),
            ),
            False,
        ),
        (_v3(TIME, "{header}", _row("UNDEF", 1), _row("UNDEF", 2)), True),
        (_v3(TIME, "{header}", _row("UNDEF", 1, rx="x"), _row("b", 2)), True),
        (_v3(TIME, "{header}", _row("a", 1) + "\textra", _row("b", 2)[:-2]), False),
        (_v3(TIME, "{header}"), True),
        # "07" is Client ID 7: the general path says so, the fast path cannot key it as text
        (_v3(TIME, "{header}", _row("a", "07"), _row("b", 2)), False),
        (_v3(TIME, "{header}", _row("a", 0), _row("b", 10)), True),
        # blank lines after END: a few are looked past, pages of them left to the other path
        (_v3(TIME, "{header}", _row("a", 1)) + "\n \n\n", True),
        (_v3(TIME, "{header}", _row("a", 1)) + "\n" * 5000, False),
    ],
)
def test_fast_path_agrees_on_awkward_layouts(text, fast_answers):
    try:
        expected = parse_lines(text, UTC)
    except StatusError:
        expected = None
    fast = parse_fast(text, UTC)
    assert (fast is not None) == fast_answers
    assert fast is None or fast == expected
    assert fast is None or list(fast.rows()) == list(expected.rows())


def test_v1_routing_header_without_the_name_column_is_a_status_error():
    """Found by Hypothesis in CI: a routing table whose header lacks the name's column made the
    comma-in-a-name repair leave too many fields, and a ValueError escaped the parser."""
    text = (
        "OpenVPN CLIENT LIST\nUpdated,2026-11-26 18:25:23\n"
        "Common Name,Real Address,Bytes Received,Bytes Sent,Connected Since\n"
        "ROUTING TABLE\nLast Ref\n10.98.0.3,bob,127.0.0.1:51657,2026-11-26 18:23:42\n"
        "GLOBAL STATS\nEND\n"
    )
    with pytest.raises(StatusError, match=r"^line 6: 4 fields where the header names 1"):
        parse_status(text, UTC)
