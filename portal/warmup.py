"""Work every server process would otherwise do on its first requests, done once before
the workers are forked so that they share it.

A worker's first page compiled the templates, configured the ORM's mappers, loaded the
translations and the calendar data (the first date formatted: 80 ms). In-process, a
session page's first rendering took 193 ms, 35 ms after this, 9 ms the next time; under
load, while the other worker kept serving, the cold worker's first pages took 1.2-1.3 s,
and everyone who asked it for a page meanwhile waited for them.
"""

from __future__ import annotations

import datetime as dt

from flask import Flask
from flask_babel import force_locale, format_datetime, get_translations
from sqlalchemy.orm import configure_mappers

from .i18n import LANGUAGES


def warm_up(app: Flask) -> None:
    """Compile every template, configure the mappers, load every language's messages
    and calendar data."""
    configure_mappers()
    environment = app.jinja_env
    for name in environment.list_templates():
        environment.get_template(name)
    with app.test_request_context():
        for language in LANGUAGES:
            with force_locale(language):
                get_translations()
                # Loads the language's calendar data and the event's time zone.
                format_datetime(dt.datetime.now(dt.UTC))
