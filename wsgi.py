"""WSGI entry point: ``gunicorn wsgi:app`` or ``flask --app wsgi``."""

from portal import create_app
from portal.warmup import warm_up

app = create_app()
# Done as each server process loads this module, not on its first visitors' pages.
warm_up(app)
