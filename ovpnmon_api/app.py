"""``create_app(config)``: the Falcon application, built from a config and a read-only engine."""

from __future__ import annotations

import time
from collections.abc import Callable

import falcon
from sqlalchemy import Engine

from ovpnmon_api import errors, resources
from ovpnmon_common.config import Config
from ovpnmon_common.db import reader_engine

PREFIX = "/api/v1"


def create_app(
    config: Config, engine: Engine | None = None, clock: Callable[[], float] = time.time
) -> falcon.App:
    """Build the app. ``engine`` defaults to the read-only engine on ``config.database_path``."""
    engine = engine or reader_engine(config.database_path, pool_size=config.api.threads)
    app = falcon.App(media_type=falcon.MEDIA_JSON)
    app.req_options.strip_url_path_trailing_slash = True
    errors.install(app)
    app.add_route(f"{PREFIX}/health", resources.Health(engine, config, clock))
    return app
