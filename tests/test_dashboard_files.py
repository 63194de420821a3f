"""The dashboard's files as ``ovpnmon-api`` serves them: headers, tokens, the switch to turn it off."""

import falcon.testing
import pytest

from ovpnmon_api.app import create_app
from ovpnmon_api.dashboard import CSP, DIRECTORY
from ovpnmon_common.config import ApiConfig, Config, ConfigError, parse_config


def client(db_path, **api):
    return falcon.testing.TestClient(create_app(Config(database=db_path, api=ApiConfig(**api))))


def test_the_page_and_its_files_come_with_a_strict_policy(db_path):
    app = client(db_path)
    page = app.simulate_get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP and "default-src 'none'" in CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    for name in ("app.js", "style.css", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css"):
        served = app.simulate_get(f"/dashboard/{name}")
        assert served.status_code == 200, name
        assert served.content == (DIRECTORY / name).read_bytes()
    assert (
        app.simulate_get("/dashboard/app.js").headers["content-type"].startswith("text/javascript")
    )
    # revalidated by ETag
    etag = page.headers["etag"]
    assert app.simulate_get("/", headers={"If-None-Match": etag}).status_code == 304
    assert app.simulate_head("/").status_code == 200


def test_no_inline_script_and_nothing_from_elsewhere_in_the_page():
    html = (DIRECTORY / "index.html").read_text()
    assert "<script>" not in html and "onclick" not in html and "http" not in html
    script = (DIRECTORY / "app.js").read_text()
    assert "innerHTML" not in script and "eval(" not in script and "http" not in script


def test_the_files_need_no_token_the_data_does(db_path):
    app = client(db_path, tokens=("t0ken",))
    assert app.simulate_get("/").status_code == 200
    assert app.simulate_get("/dashboard/app.js").status_code == 200
    assert app.simulate_get("/api/v1/clients").status_code == 401


def test_unknown_files_are_404_and_the_dashboard_can_be_turned_off(db_path):
    app = client(db_path)
    missing = app.simulate_get("/dashboard/../setup.cfg")
    assert missing.status_code == 404
    assert app.simulate_get("/dashboard/nothing.js").json == {
        "success": False,
        "error": "no dashboard file 'nothing.js'",
    }
    off = client(db_path, dashboard=False)
    assert off.simulate_get("/").status_code == 404
    assert off.simulate_get("/dashboard/app.js").status_code == 404
    assert parse_config("[api]\ndashboard = no\n").api.dashboard is False
    assert parse_config("[api]\ndashboard = yes\n").api.dashboard is True


def test_a_bad_dashboard_value_says_what_it_takes():
    with pytest.raises(ConfigError, match="expected yes or no"):
        parse_config("[api]\ndashboard = maybe\n")
