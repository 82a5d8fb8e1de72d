"""Languages: French by default, English on request (``?lang=en``, cookie, browser)."""

from __future__ import annotations

from flask import Flask, Response, request

LANGUAGES = ("fr", "en")
COOKIE = "lang"


def select_locale() -> str:
    """Pick the page's language: the URL, then the cookie, then the browser, then French."""
    for candidate in (request.args.get("lang"), request.cookies.get(COOKIE)):
        if candidate in LANGUAGES:
            return candidate
    return request.accept_languages.best_match(LANGUAGES, default="fr") or "fr"


def remember_language(response: Response) -> Response:
    """Keep a language chosen with ``?lang=`` in a cookie."""
    chosen = request.args.get("lang")
    if chosen in LANGUAGES and request.cookies.get(COOKIE) != chosen:
        response.set_cookie(
            COOKIE,
            chosen,
            max_age=365 * 24 * 3600,
            httponly=True,
            samesite="Lax",
            secure=request.is_secure,
        )
    return response


def init_app(app: Flask) -> None:
    """Register the cookie writer."""
    app.config.setdefault("BABEL_DEFAULT_LOCALE", "fr")
    app.after_request(remember_language)
