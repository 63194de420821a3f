from pathlib import Path

import click
import pytest

from ovpnmon_common.config import (
    DEFAULT_DB_PATH,
    ConfigError,
    load_config,
    parse_config,
    parse_management_address,
)

EXAMPLE = Path(__file__).parent.parent / "deploy" / "ovpnmon.conf.example"


def test_defaults_when_no_file(tmp_path, monkeypatch):
    monkeypatch.delenv("OVPNMON_CONFIG", raising=False)
    monkeypatch.setattr("ovpnmon_common.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.conf"))
    config = load_config(None)
    assert config.database == DEFAULT_DB_PATH
    assert config.interval == 10
    assert config.sources == ()
    assert config.api.host == "127.0.0.1" and config.api.port == 5001
    assert config.retention.raw_days == 3 and config.retention.daily_days == 0


def test_the_documented_example_parses():
    config = load_config(str(EXAMPLE))
    names = [s.name for s in config.sources]
    assert names == ["udp", "tcp"]
    udp, tcp = config.sources
    assert udp.status_file == "/run/openvpn-server/status-server.log"
    assert tcp.management == "127.0.0.1:7505"
    assert tcp.management_password_file == "/etc/openvpn/server/mgmt-pw.txt"
    assert config.retention.six_hour_days == 400
    assert config.api.timezone == "UTC"


def test_inline_comments_and_values():
    config = parse_config(
        """
[database]
path = /tmp/x.db   ; where
[collector]
interval = 5
[source:a.b-c_1]
status_file = /run/s.log
stale_after = 60
[api]
tokens = one, two
cors_origins = https://dash.example
timezone = Europe/Berlin
"""
    )
    assert config.database == "/tmp/x.db"
    assert config.interval == 5
    assert config.sources[0].name == "a.b-c_1" and config.sources[0].stale_after == 60
    assert config.api.tokens == ("one", "two")
    assert config.api.cors_origins == ("https://dash.example",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[collector]\ninterval = abc\n",
            "x.conf: [collector] interval: expected a whole number from 1 to 3600, got 'abc'",
        ),
        (
            "[collector]\ninterval = 0\n",
            "x.conf: [collector] interval: expected a whole number from 1 to 3600, got '0'",
        ),
        (
            "[collector]\nintervall = 5\n",
            "x.conf: [collector] intervall: unknown key; accepted: interval",
        ),
        ("[colector]\n", "x.conf: unknown section [colector]; accepted: [database], [collector]"),
        (
            "[api]\nport = 70000\n",
            "x.conf: [api] port: expected a whole number from 1 to 65535, got '70000'",
        ),
        (
            "[api]\ntimezone = Mars/Base\n",
            "x.conf: [api] timezone: expected an IANA time zone name",
        ),
        ("[source:udp]\n", "x.conf: [source:udp]: set exactly one of status_file or management"),
        (
            "[source:udp]\nstatus_file=/a\nmanagement=127.0.0.1:1\n",
            "set exactly one of status_file or management",
        ),
        (
            "[source:udp]\nmanagement = localhost\n",
            "x.conf: [source:udp] management: expected HOST:PORT, [IPv6]:PORT or unix:/path, got 'localhost'",
        ),
        (
            "[source:udp]\nstatus_file=/a\nmanagement_password_file=/p\n",
            "management_password_file: only applies with management",
        ),
        ("[source:bad name]\nstatus_file=/a\n", "x.conf: [source:bad name]: a source name is"),
        (
            "[source:udp]\nstatus_file=/a\ncolour=red\n",
            "x.conf: [source:udp] colour: unknown key; accepted: status_file, management",
        ),
        (
            "[quota]\nmonthly = lots\n",
            "x.conf: [quota] monthly: expected none or a size such as 500 GiB",
        ),
        ("[quota]\nmonthly = 9 EiB\n", "[quota] monthly: expected none or a size"),
        ("[quota]\nmonthly = 9000 PiB\n", "[quota] monthly: expected at most 8 EiB"),
        ("[quota:]\nmonthly = 1 GB\n", "x.conf: [quota:]: name the client: [quota:COMMON NAME]"),
        ("[quota:alice]\n", "x.conf: [quota:alice]: set monthly (a size, or none for no quota)"),
        (
            "[quota:alice]\ndaily = 1 GB\n",
            "x.conf: [quota:alice] daily: unknown key; accepted: monthly",
        ),
        ("[quotas]\n", "unknown section [quotas]; accepted: [database], "),
        ("interval = 5\n", "x.conf: not a valid INI file: File contains no section headers."),
        ("[api]\nport=1\nport=2\n", "x.conf: not a valid INI file"),
    ],
)
def test_errors_are_one_line_naming_file_section_key(text, message):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.conf")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"missing.conf: cannot read config file: No such file"):
        load_config(str(tmp_path / "missing.conf"))
    binary = tmp_path / "bin.conf"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(binary))


def test_env_var_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "env.conf"
    path.write_text("[collector]\ninterval = 7\n")
    monkeypatch.setenv("OVPNMON_CONFIG", str(path))
    assert load_config(None).interval == 7
    monkeypatch.setenv("OVPNMON_CONFIG", str(tmp_path / "nope.conf"))
    with pytest.raises(ConfigError, match=r"nope\.conf"):
        load_config(None)


def test_collector_needs_a_source():
    config = parse_config("[collector]\ninterval = 7\n", "x.conf")
    with pytest.raises(ConfigError, match=r"x.conf: no \[source:NAME\] section"):
        config.require_sources()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7505", ("127.0.0.1", 7505)),
        ("[::1]:7505", ("::1", 7505)),
        ("localhost:1", ("localhost", 1)),
        ("unix:/run/openvpn/mgmt.sock", ("unix", "/run/openvpn/mgmt.sock")),
    ],
)
def test_management_addresses(text, expected):
    assert parse_management_address(text) == expected


@pytest.mark.parametrize("text", ["unix:relative", "host:0", "::1:7505", "host", "host:abc"])
def test_bad_management_addresses(text):
    with pytest.raises(ValueError):
        parse_management_address(text)


def test_an_empty_token_list_is_an_error_not_authentication_off():
    with pytest.raises(ConfigError) as caught:
        parse_config("[api]\ntokens = ,\n", "c.conf")
    assert str(caught.value) == (
        "c.conf: [api] tokens: expected one or more tokens separated by commas (remove the key "
        "to serve without tokens), got ','"
    )


def test_a_config_file_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "c.conf"
    path.write_bytes("\ufeff[collector]\ninterval = 7\n".encode())
    assert load_config(str(path)).interval == 7


def test_monthly_quotas_in_decimal_and_binary_units_with_per_client_overrides():
    config = parse_config(
        "[quota]\nmonthly = 100 GiB\n"
        "[quota:alice]\nmonthly = 1.5 TB\n"
        "[quota:Bob Smith]\nmonthly = none\n"
        "[quota:carol]\nmonthly = 250000\n"
        "[quota:dave]\nmonthly = 2kib\n",
        "x.conf",
    )
    quota = config.quota
    assert quota.monthly == 100 * 1024**3
    assert quota.monthly_for("alice") == 1_500_000_000_000
    assert quota.monthly_for("Bob Smith") is None  # exempt from the default
    assert quota.monthly_for("bob smith") == 100 * 1024**3  # common names are case-sensitive
    assert quota.monthly_for("carol") == 250_000
    assert quota.monthly_for("dave") == 2048
    assert quota.monthly_for("erin") == 100 * 1024**3


def test_no_quota_section_means_no_quotas():
    assert parse_config("[api]\n", "x.conf").quota.monthly_for("alice") is None


def test_database_url_sqlite_or_postgresql_and_never_a_password_in_a_message():
    assert parse_config("[database]\nurl = sqlite:////var/x.db\n").database == "/var/x.db"
    pg = parse_config("[database]\nurl = postgresql://u:pw@db:5433/ovpnmon?sslmode=verify-full\n")
    assert pg.database == "postgresql+psycopg://u:pw@db:5433/ovpnmon?sslmode=verify-full"
    bad = {
        "[database]\nurl = mysql://u:secret@h/db\n": "unsupported database 'mysql'",
        "[database]\nurl = postgresql://u:secret@h\n": "the URL names no database",
        "[database]\nurl = sqlite://\n": "a SQLite URL names a file",
        "[database]\nurl = not a url\n": "expected sqlite:///ABSOLUTE/PATH or postgresql",
        "[database]\npath = /a.db\nurl = sqlite:////b.db\n": "set path or url, not both",
    }
    for text, said in bad.items():
        with pytest.raises(ConfigError) as info:
            parse_config(text, "x.conf")
        assert said in str(info.value) and "secret" not in str(info.value)
        assert str(info.value).startswith("x.conf: [database]")


def test_db_option_takes_a_path_or_a_url(tmp_path):
    from ovpnmon_common.cliutil import load

    empty = tmp_path / "empty.conf"
    empty.write_text("")
    assert load(str(empty), "/srv/o.db").database == "/srv/o.db"
    from ovpnmon_common.storage.location import is_postgres

    assert not is_postgres("postgresql.db")  # a file that happens to be named so
    url = load(str(empty), "postgresql://api@127.0.0.1/ovpnmon").database
    assert url == "postgresql+psycopg://api@127.0.0.1/ovpnmon"
    with pytest.raises(click.BadParameter, match="unsupported database 'oracle'"):
        load(str(empty), "oracle://x/y")
