"""Route × role matrix: every URL rule of the app, and who may use it (issue 4, SPEC §1 and §4).

``ROUTES`` declares, for every endpoint of the application, the roles allowed to use it, sample
values for its URL, and for each method the request an allowed role sends and what it gets.
``test_every_url_rule_is_declared`` walks ``app.url_map`` and fails on any rule (``static``
included) that is not declared, or whose methods changed: a new route cannot be added without
deciding who may use it.

Then every declared rule × method × role is requested, with real ids:

* an allowed role gets the declared answer, never the gate's or the login's redirect, never 403;
* a refused role gets what SPEC §4 says: anonymous visitors, participants and a disabled
  facilitator's old session are sent to ``/login`` on ``/manage/...``; a facilitator without
  the admin flag gets 403 on the admin pages; anonymous visitors (and a disabled facilitator,
  who is anonymous again) are sent to ``/access?next=...`` on the participants' pages. A refused
  request changes nothing and never carries the document's bytes.

Roles:

``anonymous``    a browser that never typed anything
``participant``  typed the shared password
``facilitator``  logged in, no admin flag
``admin``        logged in, admin flag
``disabled``     a facilitator who logged in, then was disabled by an admin (old cookie kept)
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import (
    ACCOUNT_PASSWORD,
    ADMIN_EMAIL,
    FACILITATOR_EMAIL,
    PDF_BYTES,
    SHARED_PASSWORD,
    csrf_token,
    login,
    unlock,
)
from flask import Flask
from flask.testing import FlaskClient

from portal import create_app
from portal.extensions import db
from portal.models import Document, Event, Facilitator, Meeting
from portal.services.accounts import create_facilitator, update_facilitator

ANONYMOUS = "anonymous"
PARTICIPANT = "participant"
FACILITATOR = "facilitator"
ADMIN = "admin"
DISABLED = "disabled"
ROLES = (ANONYMOUS, PARTICIPANT, FACILITATOR, ADMIN, DISABLED)

EVERYONE = frozenset(ROLES)
UNLOCKED = frozenset({PARTICIPANT, FACILITATOR, ADMIN})
FACILITATORS = frozenset({FACILITATOR, ADMIN})
ADMINS = frozenset({ADMIN})

DISABLED_EMAIL = "former@example.org"
TARGET_EMAIL = "target@example.org"
REPLACEMENT_PDF = PDF_BYTES + b"% replaced\n"

Data = Callable[[SimpleNamespace], dict[str, Any]]


@dataclass(frozen=True)
class Call:
    """One method of a rule: the form an allowed role posts, and the answer it gets."""

    status: int
    location: str | None = None  # path of the redirect an allowed role gets, if any
    data: Data | None = None  # form fields (a CSRF token is always added to a POST)


@dataclass(frozen=True)
class Route:
    rule: str
    allowed: frozenset[str]
    values: Callable[[SimpleNamespace], dict[str, Any]] = field(default=lambda w: {})
    methods: dict[str, Call] = field(default_factory=dict)


def _pdf(name: str, content: bytes = PDF_BYTES) -> tuple[io.BytesIO, str]:
    return io.BytesIO(content), name


def _meeting_fields(title: str) -> Data:
    return lambda w: {
        "title": title,
        "starts_at": "2020-11-22T10:00",
        "ends_at": "2020-11-22T12:00",
        "description": "",
        "facilitators": "",
        "meeting_url": "",
    }


#: Every endpoint of the application. Add a route: declare it here, or the walk test fails.
ROUTES: dict[str, Route] = {
    "static": Route(
        "/static/<path:filename>",
        EVERYONE,
        lambda w: {"filename": "portal.css"},
        {"GET": Call(200)},
    ),
    "health.healthz": Route("/healthz", EVERYONE, methods={"GET": Call(200)}),
    "gate.access": Route(
        "/access",
        EVERYONE,
        methods={
            "GET": Call(200),
            "POST": Call(303, "/", lambda w: {"password": SHARED_PASSWORD}),
        },
    ),
    "gate.confirm_leave": Route("/leave", UNLOCKED, methods={"GET": Call(200)}),
    "gate.leave": Route("/leave", EVERYONE, methods={"POST": Call(303, "/access")}),
    "auth.login": Route(
        "/login",
        EVERYONE,
        methods={
            "GET": Call(200),
            "POST": Call(
                303,
                "/manage",
                lambda w: {"email": FACILITATOR_EMAIL, "password": ACCOUNT_PASSWORD},
            ),
        },
    ),
    "auth.logout": Route("/logout", EVERYONE, methods={"POST": Call(303, "/login")}),
    "programme.index": Route("/", UNLOCKED, methods={"GET": Call(200)}),
    "programme.meeting": Route(
        "/sessions/<slug>", UNLOCKED, lambda w: {"slug": w.meeting.slug}, {"GET": Call(200)}
    ),
    "programme.download": Route(
        "/documents/<int:document_id>/<filename>",
        UNLOCKED,
        lambda w: {"document_id": w.document.id, "filename": w.document.original_name},
        {"GET": Call(200)},
    ),
    "programme.preview": Route(
        "/preview/<int:document_id>",
        UNLOCKED,
        lambda w: {"document_id": w.document.id},
        {"GET": Call(200)},
    ),
    "programme.archive": Route(
        "/sessions/<slug>/archive.zip",
        UNLOCKED,
        lambda w: {"slug": w.meeting.slug},
        {"GET": Call(200)},
    ),
    "manage.index": Route("/manage", FACILITATORS, methods={"GET": Call(200)}),
    # Form-style requests without tus headers: what an allowed role gets is a protocol refusal.
    "tus.create": Route("/manage/tus", FACILITATORS, methods={"POST": Call(412)}),
    "tus.upload": Route(
        "/manage/tus/<upload_id>",
        FACILITATORS,
        lambda w: {"upload_id": "0" * 32},
        {"GET": Call(404), "PATCH": Call(415), "DELETE": Call(412)},
    ),
    "manage.upload": Route(
        "/manage/upload",
        FACILITATORS,
        methods={
            "GET": Call(200),
            "POST": Call(
                200,
                None,
                lambda w: {"files": _pdf("matrix.pdf"), "session": "", "tags": "matrix"},
            ),
        },
    ),
    "manage.edit_document": Route(
        "/manage/documents/<int:document_id>/edit",
        FACILITATORS,
        lambda w: {"document_id": w.document.id},
        {
            "GET": Call(200),
            "POST": Call(
                303,
                "/manage",
                lambda w: {
                    "title": "Edited by the matrix",
                    "description": "",
                    "session": str(w.meeting.id),
                    "tags": "matrix",
                },
            ),
        },
    ),
    "manage.replace_document_file": Route(
        "/manage/documents/<int:document_id>/replace",
        FACILITATORS,
        lambda w: {"document_id": w.document.id},
        {
            "POST": Call(
                303,
                "/manage/documents/{document_id}/edit",
                lambda w: {"file": _pdf("v2.pdf", REPLACEMENT_PDF)},
            )
        },
    ),
    "manage.remove_document": Route(
        "/manage/documents/<int:document_id>/delete",
        FACILITATORS,
        lambda w: {"document_id": w.document.id},
        {"POST": Call(303, "/manage")},
    ),
    "manage.new_meeting": Route(
        "/manage/sessions/new",
        FACILITATORS,
        methods={"GET": Call(200), "POST": Call(303, "/manage", _meeting_fields("Nouvelle"))},
    ),
    "manage.edit_meeting": Route(
        "/manage/sessions/<int:meeting_id>/edit",
        FACILITATORS,
        lambda w: {"meeting_id": w.meeting.id},
        {"GET": Call(200), "POST": Call(303, "/manage", _meeting_fields("Renommée"))},
    ),
    "manage.remove_meeting": Route(
        "/manage/sessions/<int:meeting_id>/delete",
        FACILITATORS,
        lambda w: {"meeting_id": w.meeting.id},
        {"POST": Call(303, "/manage")},
    ),
    "admin.settings": Route(
        "/manage/settings",
        ADMINS,
        methods={
            "GET": Call(200),
            "POST": Call(
                303,
                "/manage/settings",
                lambda w: {
                    "title": "Taken over",
                    "description": "",
                    "password": "",
                    "password_confirm": "",
                },
            ),
        },
    ),
    "admin.facilitators": Route(
        "/manage/facilitators",
        ADMINS,
        methods={
            "GET": Call(200),
            "POST": Call(
                303,
                "/manage/facilitators",
                lambda w: {
                    "email": "intruder@example.org",
                    "name": "Intruder",
                    "password": "intruder-pass",
                    "is_admin": "y",
                },
            ),
        },
    ),
    # No ``enabled`` field: the target account is disabled.
    "admin.facilitator_rights": Route(
        "/manage/facilitators/<int:facilitator_id>",
        ADMINS,
        lambda w: {"facilitator_id": w.target_id},
        {"POST": Call(303, "/manage/facilitators")},
    ),
}

AUTOMATIC_METHODS = {"HEAD", "OPTIONS"}
VARIABLE = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
CASES = [
    pytest.param(endpoint, method, role, id=f"{endpoint}-{method}-{role}")
    for endpoint, route in ROUTES.items()
    for method in route.methods
    for role in ROLES
]


# --- the world every case runs in ---------------------------------------------------------------


@pytest.fixture
def world(app: Flask, make_meeting, make_document) -> SimpleNamespace:
    """A session with one document in it, and a facilitator account an admin may disable."""
    meeting = make_meeting("Ouverture")
    document = make_document("support.pdf", meeting=meeting, tags=["plenary"])
    with app.app_context():
        target = create_facilitator(TARGET_EMAIL, ACCOUNT_PASSWORD, name="Target")
        target_id = target.id
        create_facilitator(DISABLED_EMAIL, ACCOUNT_PASSWORD, name="Former")
        db.session.remove()
    return SimpleNamespace(meeting=meeting, document=document, target_id=target_id)


def client_as(app: Flask, role: str) -> FlaskClient:
    """A browser in ``role``."""
    client = app.test_client()
    if role == PARTICIPANT:
        assert unlock(client).status_code == 303
    elif role == FACILITATOR:
        assert login(client, FACILITATOR_EMAIL).status_code == 303
    elif role == ADMIN:
        assert login(client, ADMIN_EMAIL).status_code == 303
    elif role == DISABLED:
        assert login(client, DISABLED_EMAIL).status_code == 303
        assert client.get("/manage").status_code == 200
        with app.app_context():
            acting = db.session.scalars(
                db.select(Facilitator).where(Facilitator.email == ADMIN_EMAIL)
            ).one()
            former = db.session.scalars(
                db.select(Facilitator).where(Facilitator.email == DISABLED_EMAIL)
            ).one()
            update_facilitator(former, acting=acting, enabled=False, is_admin=False)
            db.session.remove()
    return client


def snapshot(app: Flask) -> dict[str, Any]:
    """What a refused request must leave as it was."""
    with app.app_context():
        documents = db.session.scalars(db.select(Document).order_by(Document.id)).all()
        meetings = db.session.scalars(db.select(Meeting).order_by(Meeting.id)).all()
        accounts = db.session.scalars(db.select(Facilitator).order_by(Facilitator.id)).all()
        event = db.session.scalars(db.select(Event)).one()
        state = {
            "documents": [
                (
                    d.id,
                    d.title,
                    d.description,
                    d.meeting_id,
                    d.sha256,
                    d.original_name,
                    sorted(t.name for t in d.tags),
                )
                for d in documents
            ],
            "meetings": [(m.id, m.title, m.slug, m.starts_at) for m in meetings],
            "accounts": [
                (a.id, a.email, a.enabled, a.is_admin, a.auth_version, a.password_hash)
                for a in accounts
            ],
            "event": (event.title, event.password_version, event.shared_password_hash),
        }
        db.session.remove()
        return state


def url_for_case(route: Route, world: SimpleNamespace) -> str:
    """The declared rule with its variables replaced by the world's real values."""
    values = route.values(world)
    return VARIABLE.sub(lambda match: str(values[match.group(1)]), route.rule)


def location(response) -> tuple[str, dict[str, list[str]]]:
    parts = urlsplit(response.headers.get("Location", ""))
    return parts.path, parse_qs(parts.query)


def is_access_control_redirect(response) -> bool:
    """The gate's or the login's redirect that carries the refused page as ``next``."""
    if response.status_code not in (301, 302, 303, 307, 308):
        return False
    path, query = location(response)
    return path in ("/access", "/login") and "next" in query


def request(client: FlaskClient, url: str, method: str = "GET", **kwargs: Any):
    """Send a request and read its whole answer, closing any file it streamed."""
    response = client.open(url, method=method, **kwargs)
    response.get_data()
    response.close()
    return response


def send(client: FlaskClient, method: str, url: str, call: Call, world: SimpleNamespace):
    if method in ("GET", "HEAD"):
        return request(client, url, method)
    data = dict(call.data(world)) if call.data else {}
    data["csrf_token"] = csrf_token(client, "/access")
    return request(client, url, method, data=data)


def assert_refused(response, role: str, path: str, method: str) -> None:
    """What SPEC §4 gives a role that may not use ``path``."""
    where = f"{method} {path} as {role}"
    if path.startswith("/manage"):
        if role == FACILITATOR:
            assert response.status_code == 403, where
            return
        assert response.status_code in (302, 303), (where, response.status_code)
        target, query = location(response)
        assert target == "/login", (where, response.headers.get("Location"))
        assert query.get("next") == [path], (where, response.headers.get("Location"))
        return
    assert role in (ANONYMOUS, DISABLED), f"{where}: only strangers are refused here"
    assert response.status_code == 302, (where, response.status_code)
    target, query = location(response)
    assert target == "/access", (where, response.headers.get("Location"))
    assert query.get("next") == [path], (where, response.headers.get("Location"))


# --- the declaration covers the application -------------------------------------------------------


def declaration_gaps(app: Flask) -> list[str]:
    """Every way the app's URL rules and ``ROUTES`` disagree."""
    gaps, seen = [], set()
    for rule in app.url_map.iter_rules():
        seen.add(rule.endpoint)
        route = ROUTES.get(rule.endpoint)
        methods = set(rule.methods or ()) - AUTOMATIC_METHODS
        if route is None:
            gaps.append(f"undeclared: {rule.endpoint} {rule.rule} {sorted(methods)}")
        elif route.rule != rule.rule or methods != set(route.methods):
            gaps.append(
                f"out of date: {rule.endpoint}: app has {rule.rule} {sorted(methods)},"
                f" declared {route.rule} {sorted(route.methods)}"
            )
    gaps += [f"stale: {endpoint} is declared but not routed" for endpoint in set(ROUTES) - seen]
    return gaps


def test_every_url_rule_is_declared(app):
    assert declaration_gaps(app) == []


def test_the_walk_catches_a_new_route_and_a_new_method(app_config, app):
    """The guard itself works: an undeclared route or method fails the walk."""
    grown = create_app(app_config)
    try:
        grown.add_url_rule("/export.csv", "programme.export", lambda: "id,name")
        grown.add_url_rule("/static-copy/<path:name>", "static_copy", lambda name: name)
        leave = next(r for r in grown.url_map.iter_rules() if r.endpoint == "gate.leave")
        leave.methods.add("GET")
        gaps = declaration_gaps(grown)
    finally:
        with grown.app_context():
            db.session.remove()
            db.engine.dispose()
    assert any("programme.export" in gap for gap in gaps), gaps
    assert any("static_copy" in gap for gap in gaps), gaps
    assert any("gate.leave" in gap for gap in gaps), gaps


def test_every_endpoint_has_exactly_one_rule(app):
    """One declaration per endpoint: a second rule to the same view must be declared apart."""
    endpoints = [rule.endpoint for rule in app.url_map.iter_rules()]
    assert sorted(endpoints) == sorted(set(endpoints))


def test_declaration_uses_only_known_roles_and_keeps_admin_inside_facilitators():
    for endpoint, route in ROUTES.items():
        assert route.allowed <= EVERYONE, endpoint
        assert route.allowed, endpoint
        # A role never has fewer rights than the role below it.
        if FACILITATOR in route.allowed:
            assert ADMIN in route.allowed, endpoint
        if PARTICIPANT in route.allowed:
            assert FACILITATORS <= route.allowed, endpoint
        # Only public routes may be reached by someone who holds nothing valid.
        if ANONYMOUS in route.allowed or DISABLED in route.allowed:
            assert route.allowed == EVERYONE, endpoint


# --- every rule × method × role -------------------------------------------------------------------


@pytest.mark.parametrize(("endpoint", "method", "role"), CASES)
def test_route_role_matrix(app, world, endpoint, method, role):
    route = ROUTES[endpoint]
    call = route.methods[method]
    path = url_for_case(route, world)
    client = client_as(app, role)
    before = snapshot(app)

    response = send(client, method, path, call, world)

    if role in route.allowed:
        where = f"{method} {path} as {role}"
        assert not is_access_control_redirect(response), (where, response.headers.get("Location"))
        assert response.status_code not in (401, 403), (where, response.status_code)
        assert response.status_code == call.status, (where, response.status_code)
        if call.location is not None:
            expected = call.location.format(**route.values(world))
            assert location(response)[0] == expected, (where, response.headers.get("Location"))
        if endpoint == "programme.download":
            assert response.data == PDF_BYTES
    else:
        assert_refused(response, role, path, method)
        assert PDF_BYTES not in response.data
        assert snapshot(app) == before, f"refused {method} {path} as {role} changed the data"
        if method == "GET":
            # HEAD is routed like GET: it is refused the same way.
            assert_refused(request(client, path, "HEAD"), role, path, "HEAD")


GET_ROUTES = sorted(endpoint for endpoint, route in ROUTES.items() if "GET" in route.methods)


@pytest.mark.parametrize("endpoint", GET_ROUTES)
def test_head_is_answered_like_get(app, world, endpoint):
    """HEAD (monitoring, link checkers) gets GET's status and headers, without a body."""
    route = ROUTES[endpoint]
    role = min(route.allowed, key=ROLES.index)
    if role == ANONYMOUS:
        role = ADMIN  # public routes: ask with the most rights, where views branch the most
    client = client_as(app, role)
    path = url_for_case(route, world)
    got, head = request(client, path), request(client, path, "HEAD")
    assert head.status_code == got.status_code == route.methods["GET"].status, (
        f"GET {path} as {role}: {got.status_code}, HEAD: {head.status_code}"
    )
    assert head.data == b""
    assert head.headers.get("Content-Type") == got.headers.get("Content-Type")


@pytest.mark.parametrize("endpoint", sorted(ROUTES))
def test_unrouted_methods_are_refused_for_every_role(app, world, endpoint):
    """PUT, PATCH, DELETE (and GET or POST where not routed) never reach a view."""
    route = ROUTES[endpoint]
    path = url_for_case(route, world)
    # Methods of the same address routed to another endpoint (GET and POST /leave) are
    # that endpoint's cases.
    routed = {m for other in ROUTES.values() if other.rule == route.rule for m in other.methods}
    other_methods = sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - routed)
    clients = {role: client_as(app, role) for role in ROLES}
    tokens = {role: csrf_token(client, "/access") for role, client in clients.items()}
    before = snapshot(app)
    for role, client in clients.items():
        for method in other_methods:
            response = request(client, path, method, data={"csrf_token": tokens[role]})
            where = f"{method} {path} as {role}"
            assert response.status_code == 405, (where, response.status_code)
            assert PDF_BYTES not in response.data
    assert snapshot(app) == before


@pytest.mark.parametrize("endpoint", sorted(ROUTES))
def test_options_reveals_nothing(app, world, endpoint):
    """Flask answers OPTIONS itself: it must never carry a page or a file."""
    path = url_for_case(ROUTES[endpoint], world)
    response = request(app.test_client(), path, "OPTIONS")
    assert response.status_code in (200, 302, 303), response.status_code
    assert response.data == b"" or response.status_code in (302, 303)
    assert PDF_BYTES not in response.data


def test_a_disabled_facilitator_is_exactly_an_anonymous_visitor(app, world):
    """The old cookie of a disabled account opens nothing an anonymous browser could not."""
    former = client_as(app, DISABLED)
    stranger = client_as(app, ANONYMOUS)
    for endpoint, route in ROUTES.items():
        if "GET" not in route.methods:
            continue
        path = url_for_case(route, world)
        mine, theirs = request(former, path), request(stranger, path)
        assert (mine.status_code, mine.headers.get("Location")) == (
            theirs.status_code,
            theirs.headers.get("Location"),
        ), endpoint
