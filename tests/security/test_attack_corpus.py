"""Attack corpus (issue 4, SPEC sections 4 and 6): zero of these attacks may succeed.

Every case's id starts with the class of bug it guards against: ``path-traversal``,
``symlink-escape``, ``stored-xss``, ``reflected-xss``, ``polyglot``, ``lying-content-type``,
``charset-sniffing``, ``auth-bypass``, ``stale-cookie``, ``forged-cookie``, ``csrf``,
``open-redirect``, ``header-injection``, ``dos-body``, ``unsafe-file-response``,
``sql-injection``, ``template-injection``. Cases named ``control-...`` are not attacks: they
prove that the same request succeeds when it is legitimate, so that a refusal above is the
defence at work and not a broken test payload.
"""

from __future__ import annotations

import dataclasses
import gzip
import http.client
import io
import os
import re
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote, urljoin, urlsplit

import pytest
from conftest import (
    ACCOUNT_PASSWORD,
    ADMIN_EMAIL,
    FACILITATOR_EMAIL,
    SHARED_PASSWORD,
    count_rows,
    csrf_token,
    login,
    stored_files,
    unlock,
)
from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from flask.testing import FlaskClient
from werkzeug.serving import make_server
from werkzeug.test import EnvironBuilder, run_wsgi_app

import portal
from portal import create_app
from portal.config import DEFAULT_ALLOWED_EXTENSIONS
from portal.extensions import db
from portal.filetypes import MEDIA_TYPES
from portal.models import Document, Event, Facilitator, Meeting
from portal.services.accounts import set_shared_password

PORTAL_DIR = Path(portal.__file__).parent
SESSION_COOKIE = "portal_session"

#: Bytes that live outside the storage: no response may ever carry them.
SECRET = b"TOP-SECRET-OUTSIDE-STORAGE-7f3a"
#: The one legitimate document; its bytes may only come back from its own download URL.
DOC_MARKER = b"CONFIDENTIAL-DOCUMENT-BYTES-91c2"
DOC_BYTES = b"%PDF-1.4\n% " + DOC_MARKER + b"\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
MEETING_TITLE = "Confidential session 5d1e"
FORBIDDEN_MARKERS = (SECRET, b"SQLite format 3", b"[project]", b"root:x:0:0", b"-----BEGIN")

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
SCRIPT = b"<script>window.__pwned=1;alert(1)</script>"
HTML_PAGE = b"<!doctype html><html><body>" + SCRIPT + b"<img src=x onerror=alert(2)></body></html>"

#: Types a browser would run as a document: no portal file response may use them.
ACTIVE_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "text/javascript",
        "application/javascript",
        "application/x-javascript",
        "text/xsl",
        "multipart/x-mixed-replace",
    }
)
#: The only types ?inline=1 may show in the browser (SPEC section 4).
INLINE_EXTENSIONS = frozenset({"pdf", "png", "jpg", "jpeg", "gif", "webp"})


# --- the world under attack -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class World:
    document_id: int
    storage_key: str
    meeting_id: int
    slug: str
    facilitator_id: int
    admin_id: int
    storage: Path
    outside: Path
    secret: Path

    def fill(self, template: str) -> str:
        return template.format(
            doc=self.document_id,
            key=self.storage_key,
            meeting=self.meeting_id,
            slug=self.slug,
            facilitator=self.facilitator_id,
            admin=self.admin_id,
            storage=str(self.storage).lstrip("/"),
            storage_enc=quote(str(self.storage), safe=""),
            secret=str(self.secret).lstrip("/"),
            secret_enc=quote(str(self.secret), safe=""),
            outside_enc=quote(str(self.outside), safe=""),
            static_to_storage=os.path.relpath(self.storage, PORTAL_DIR / "static"),
        )


def account_id(app: Flask, email: str) -> int:
    with app.app_context():
        found = db.session.scalars(db.select(Facilitator.id).where(Facilitator.email == email))
        value = found.one()
        db.session.remove()
        return value


@pytest.fixture
def world(app, storage_dir, make_meeting, make_document) -> World:
    meeting = make_meeting(MEETING_TITLE)
    document = make_document("support.pdf", DOC_BYTES, meeting=meeting, title="Support")
    # A sibling folder sharing the storage path's prefix: <tmp>/uploads-evil beside <tmp>/uploads.
    outside = Path(f"{storage_dir}-evil")
    outside.mkdir()
    secret = outside / "secret"
    # As long as the document: a size check alone cannot tell them apart.
    secret.write_bytes(SECRET.ljust(len(DOC_BYTES), b"#"))
    # The same name as the document's key, in the sibling folder.
    (outside / document.storage_key).write_bytes(SECRET.ljust(len(DOC_BYTES), b"#"))
    return World(
        document_id=document.id,
        storage_key=document.storage_key,
        meeting_id=meeting.id,
        slug=meeting.slug,
        facilitator_id=account_id(app, FACILITATOR_EMAIL),
        admin_id=account_id(app, ADMIN_EMAIL),
        storage=storage_dir,
        outside=outside,
        secret=secret,
    )


def db_state(app: Flask) -> tuple:
    """Everything a successful attack could change in the database."""
    with app.app_context():
        documents = [
            (
                d.id,
                d.title,
                d.description,
                d.meeting_id,
                d.original_name,
                d.storage_key,
                d.sha256,
                d.content_type,
                tuple(t.name for t in d.tags),
            )
            for d in db.session.scalars(db.select(Document).order_by(Document.id))
        ]
        meetings = [
            (m.id, m.slug, m.title, m.description, m.facilitators, m.meeting_url, m.starts_at)
            for m in db.session.scalars(db.select(Meeting).order_by(Meeting.id))
        ]
        accounts = [
            (f.id, f.email, f.name, f.is_admin, f.enabled, f.auth_version, f.password_hash)
            for f in db.session.scalars(db.select(Facilitator).order_by(Facilitator.id))
        ]
        events = [
            (
                e.title,
                e.description,
                e.starts_on,
                e.ends_on,
                e.password_version,
                e.shared_password_hash,
                e.access_opens,
                e.access_closes,
            )
            for e in db.session.scalars(db.select(Event))
        ]
        db.session.remove()
    return documents, meetings, accounts, events


def reach(client: FlaskClient) -> tuple[int, int]:
    """What this browser may open: (programme, dashboard) status codes."""
    return client.get("/").status_code, client.get("/manage").status_code


def observe(app: Flask, storage_dir: Path, client: FlaskClient) -> tuple:
    return db_state(app), stored_files(storage_dir), reach(client)


def read(response) -> bytes:
    """Read the whole body and release the file, as a WSGI server does."""
    data = response.get_data()
    response.close()
    return data


def assert_no_forbidden_bytes(body: bytes) -> None:
    for marker in FORBIDDEN_MARKERS:
        assert marker not in body, f"response leaked {marker!r}"


def directives(policy: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            found[words[0].lower()] = [w.lower() for w in words[1:]]
    return found


# --- clients and cookies --------------------------------------------------------------------


def new_client(app: Flask, role: str) -> FlaskClient:
    client = app.test_client()
    client.set_cookie("lang", "en")
    if role == "participant":
        assert unlock(client).status_code == 303
    elif role == "facilitator":
        assert login(client).status_code == 303
    elif role == "admin":
        assert login(client, ADMIN_EMAIL).status_code == 303
    else:
        assert role == "anonymous"
    return client


def cookie_of(client: FlaskClient) -> str:
    cookie = client.get_cookie(SESSION_COOKIE)
    assert cookie is not None, "no session cookie to save"
    return cookie.value


def client_with_cookie(app: Flask, value: str) -> FlaskClient:
    client = app.test_client()
    client.set_cookie("lang", "en")
    client.set_cookie(SESSION_COOKIE, value)
    return client


def forged_cookie(payload: dict) -> str:
    """A session cookie signed with a key that is not the portal's."""
    forger = Flask("forger")
    forger.secret_key = "not-the-portal-secret"
    serializer = SecureCookieSessionInterface().get_signing_serializer(forger)
    assert serializer is not None
    return serializer.dumps(payload)


def token_of(client: FlaskClient, role: str) -> str:
    return csrf_token(client, "/manage/upload" if role in {"facilitator", "admin"} else "/access")


# --- multipart built by hand (control over every header of a part) --------------------------

BOUNDARY = "----attack-corpus-boundary-4f9e1c"


def part(name: str, value: bytes | str, disposition_extra: str = "", ctype: str = "") -> bytes:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"{disposition_extra}\r\n'
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    value = value.encode() if isinstance(value, str) else value
    return head.encode("utf-8") + b"\r\n" + value + b"\r\n"


def file_part(
    filename: str, content: bytes, ctype: str = "application/octet-stream", field="files"
) -> bytes:
    """A file part; ``filename`` is written verbatim between the quotes."""
    return part(field, content, f'; filename="{filename}"', ctype)


def multipart(*parts: bytes) -> tuple[bytes, str]:
    body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    return body, f"multipart/form-data; boundary={BOUNDARY}"


def upload_form(token: str, *files: bytes, title: str = "", description: str = "", tags=""):
    return multipart(
        part("csrf_token", token),
        part("session", ""),
        part("tags", tags),
        part("title", title),
        part("description", description),
        *files,
    )


def post_upload(client: FlaskClient, *files: bytes, **fields: str):
    body, ctype = upload_form(csrf_token(client, "/manage/upload"), *files, **fields)
    return client.post("/manage/upload", data=body, content_type=ctype)


def only_document(app: Flask) -> Document:
    with app.app_context():
        documents = db.session.scalars(db.select(Document)).all()
        assert len(documents) == 1, f"expected one document, found {len(documents)}"
        db.session.expunge_all()
        db.session.remove()
        return documents[0]


def assert_nothing_stored(app: Flask, storage_dir: Path) -> None:
    assert count_rows(app, Document) == 0
    assert stored_files(storage_dir) == [], "a file or a temporary file was left behind"


# --- checks of file responses ---------------------------------------------------------------


def assert_inert_file_response(response, *, inline: bool, media_type: str | None = None) -> None:
    """SPEC sections 4 and 6: a served file can never run in the portal's origin."""
    assert response.status_code in (200, 206), response.status_code
    assert response.mimetype not in ACTIVE_TYPES
    if media_type is not None:
        assert response.mimetype == media_type
    if response.mimetype.startswith("text/"):
        # A declared charset: no UTF-7 or UTF-16 guessing by the browser.
        assert "charset=" in response.headers["Content-Type"].lower()
    kind = response.headers["Content-Disposition"].split(";")[0].strip().lower()
    assert kind == ("inline" if inline else "attachment")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    policy = directives(response.headers["Content-Security-Policy"])
    if inline and response.mimetype == "application/pdf":
        # The one exception: the browser's PDF viewer needs a CSP without sandbox.
        assert policy.get("default-src") == ["'none'"]
        scripts = policy.get("script-src", ["'none'"])
        assert scripts == ["'none'"], f"inline PDF may run scripts: {scripts}"
    else:
        assert "sandbox" in policy, "file response without a sandboxing CSP"
        assert "allow-scripts" not in policy["sandbox"]
        assert "allow-same-origin" not in policy["sandbox"]
    cache = response.headers.get("Cache-Control", "").lower()
    assert "private" in cache or "no-store" in cache, "a shared cache could keep a document"


def disposition_params(value: str) -> list[tuple[str, str]]:
    """Split Content-Disposition parameters, honouring quoted strings (RFC 6266)."""
    params = []
    for key, raw in re.findall(r';\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', value):
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params.append((key.lower(), raw.strip()))
    return params


def assert_no_header_injection(response) -> None:
    assert response.status_code < 500, f"server error {response.status_code}"
    assert "x-injected" not in {name.lower() for name in response.headers.keys()}
    for name, value in response.headers.items():
        assert "\r" not in value and "\n" not in value, f"line break in {name}"
    for cookie in response.headers.getlist("Set-Cookie"):
        assert "injected" not in cookie.lower()


def assert_single_filename(response, stored_name: str) -> None:
    """Content-Disposition names exactly the stored file, with no smuggled parameter."""
    params = disposition_params(response.headers["Content-Disposition"])
    keys = [key for key, _ in params]
    assert set(keys) <= {"filename", "filename*"}, f"smuggled parameters: {keys}"
    assert len(keys) == len(set(keys)), f"repeated parameters: {keys}"
    values = dict(params)
    if "filename*" in values:
        charset, _, rest = values["filename*"].partition("'")
        assert charset.lower() == "utf-8"
        assert unquote(rest.partition("'")[2], encoding="utf-8") == stored_name
    else:
        assert values["filename"] == stored_name


# --- checks of HTML pages -------------------------------------------------------------------

ACTIVE_TAGS = frozenset(
    {"script", "img", "svg", "iframe", "object", "embed", "frame", "base", "math", "video"}
)
URL_ATTRIBUTES = frozenset({"href", "src", "action", "formaction", "xlink:href", "data"})


class PageMarkup(HTMLParser):
    """The tags, attributes and text of a page, as a browser's parser would see them."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str, str]] = []
        self.text: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [(tag, name, value or "") for name, value in attrs]

    handle_startendtag = handle_starttag

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def everything_shown(self) -> str:
        return " ".join(self.text) + " " + " ".join(v for _, _, v in self.attributes)


def assert_no_injected_markup(page: str) -> PageMarkup:
    markup = PageMarkup(page)
    active = sorted(set(markup.tags) & ACTIVE_TAGS)
    assert not active, f"injected elements: {active}"
    for tag, name, value in markup.attributes:
        assert not name.startswith("on"), f"event handler {name} on <{tag}>"
        if name in URL_ATTRIBUTES:
            scheme = re.sub(r"[\x00-\x20]", "", value).split(":", 1)[0].lower()
            assert scheme not in {"javascript", "vbscript", "data"}, f"{name}={value!r}"
    return markup


# --- path traversal -------------------------------------------------------------------------

TRAVERSAL_AS_PARTICIPANT = [
    pytest.param("/documents/{doc}/..%2f..%2fuploads-evil%2fsecret", id="path-traversal-%2f-name"),
    pytest.param(
        "/documents/{doc}/%2e%2e%2f%2e%2e%2fuploads-evil%2fsecret", id="path-traversal-%2e%2e-name"
    ),
    pytest.param(
        "/documents/{doc}/%252e%252e%252f%252e%252e%252fuploads-evil%252fsecret",
        id="path-traversal-double-encoding-name",
    ),
    pytest.param(
        "/documents/{doc}/..%5c..%5cuploads-evil%5csecret", id="path-traversal-%5c-backslash-name"
    ),
    pytest.param(
        "/documents/{doc}/..\\..\\uploads-evil\\secret", id="path-traversal-raw-backslash-name"
    ),
    pytest.param(
        "/documents/{doc}/support.pdf%00..%2f..%2fuploads-evil%2fsecret",
        id="path-traversal-nul-name",
    ),
    pytest.param("/documents/{doc}/{secret_enc}", id="path-traversal-absolute-name"),
    pytest.param("/documents/{doc}//{secret}", id="path-traversal-absolute-extra-slash"),
    pytest.param("/documents/..%2f..%2fuploads-evil%2fsecret/x", id="path-traversal-%2f-id"),
    pytest.param("/documents/%2e%2e/secret", id="path-traversal-%2e%2e-id"),
    pytest.param("/documents/%252e%252e%252fsecret/x", id="path-traversal-double-encoding-id"),
    pytest.param("/documents/..%5csecret/x", id="path-traversal-backslash-id"),
    pytest.param("/documents/{doc}%00/x", id="path-traversal-nul-id"),
    pytest.param("/documents//{secret}", id="path-traversal-absolute-id"),
    pytest.param("/documents/{key}/support.pdf", id="path-traversal-storage-key-as-id"),
    pytest.param(
        "/documents/..%2fuploads-evil%2f{key}/support.pdf",
        id="path-traversal-sibling-prefix-folder-id",
    ),
    pytest.param("/documents/{doc}.0/x", id="path-traversal-id-confusion-float"),
    pytest.param("/documents/0x{doc}/x", id="path-traversal-id-confusion-hex"),
    pytest.param("/sessions/..%2f..%2fuploads-evil", id="path-traversal-%2f-slug"),
    pytest.param("/sessions/%2e%2e/archive.zip", id="path-traversal-%2e%2e-slug-archive"),
    pytest.param(
        "/sessions/%252e%252e%252fuploads-evil/archive.zip",
        id="path-traversal-double-encoding-slug-archive",
    ),
    pytest.param("/sessions/..%5cuploads-evil/archive.zip", id="path-traversal-backslash-slug"),
    pytest.param("/sessions/{slug}%00/archive.zip", id="path-traversal-nul-slug"),
    pytest.param("/sessions/{outside_enc}/archive.zip", id="path-traversal-absolute-slug"),
    pytest.param(
        "/sessions/{slug}/..%2f..%2fuploads-evil%2fsecret", id="path-traversal-%2f-after-slug"
    ),
    pytest.param("/static/..%2f..%2fpyproject.toml", id="path-traversal-%2f-static"),
    pytest.param("/static/../../pyproject.toml", id="path-traversal-dotdot-static"),
    pytest.param("/static/%2e%2e/%2e%2e/pyproject.toml", id="path-traversal-%2e%2e-static"),
    pytest.param(
        "/static/%252e%252e/%252e%252e/pyproject.toml", id="path-traversal-double-encoding-static"
    ),
    pytest.param("/static/..%5c..%5cpyproject.toml", id="path-traversal-backslash-static"),
    pytest.param("/static/portal.css%00/../../x", id="path-traversal-nul-static"),
    pytest.param("/static//{secret}", id="path-traversal-absolute-static-sibling-folder"),
    pytest.param("/static//{storage}/{key}", id="path-traversal-static-second-route-to-storage"),
    pytest.param(
        "/static/{static_to_storage}/{key}", id="path-traversal-static-relative-to-storage"
    ),
    pytest.param("/static/{static_to_storage}-evil/secret", id="path-traversal-static-sibling"),
    pytest.param("/healthz/..%2f..%2fetc%2fpasswd", id="path-traversal-healthz"),
]


@pytest.mark.parametrize("template", TRAVERSAL_AS_PARTICIPANT)
def test_path_traversal_reads_nothing_outside_the_document(app, world, template):
    client = new_client(app, "participant")
    response = client.get(world.fill(template))
    body = read(response)
    assert_no_forbidden_bytes(body)
    if response.status_code == 200 and body == DOC_BYTES:
        # The <filename> part only makes the URL readable: the id's own document is fine.
        assert response.headers["Content-Disposition"].startswith("attachment")
        return
    assert DOC_MARKER not in body, "the document's bytes came back through another route"
    assert response.status_code in {301, 302, 308, 400, 404, 405}, response.status_code


TRAVERSAL_AS_ADMIN = [
    pytest.param("GET", "/manage/documents/..%2f{doc}/edit", id="path-traversal-%2f-manage-doc"),
    pytest.param(
        "GET", "/manage/documents/{doc}/%2e%2e/%2e%2e/settings", id="path-traversal-manage-dotdot"
    ),
    pytest.param(
        "GET", "/manage/sessions/%2e%2e%2f{meeting}/edit", id="path-traversal-%2e%2e-manage-session"
    ),
    pytest.param(
        "POST",
        "/manage/documents/%252e%252e%252f{doc}/delete",
        id="path-traversal-double-encoding-manage-delete",
    ),
    pytest.param(
        "POST", "/manage/documents/{doc}%00/replace", id="path-traversal-nul-manage-replace"
    ),
    pytest.param(
        "POST", "/manage/sessions/..%5c{meeting}/delete", id="path-traversal-backslash-manage"
    ),
    pytest.param(
        "POST", "/manage/facilitators//{secret}", id="path-traversal-absolute-manage-account"
    ),
    pytest.param("GET", "/manage/documents/{key}/edit", id="path-traversal-storage-key-manage"),
]


@pytest.mark.parametrize(("method", "template"), TRAVERSAL_AS_ADMIN)
def test_path_traversal_on_manage_routes_changes_and_reads_nothing(
    app, world, storage_dir, method, template
):
    client = new_client(app, "admin")
    token = csrf_token(client, "/manage/upload")
    before = observe(app, storage_dir, client)
    response = client.open(world.fill(template), method=method, data={"csrf_token": token})
    body = read(response)
    assert_no_forbidden_bytes(body)
    assert response.status_code in {400, 404, 405}, response.status_code
    assert observe(app, storage_dir, client) == before


def set_storage_key(app: Flask, document_id: int, key: str, size: int | None = None) -> None:
    with app.app_context():
        document = db.session.get(Document, document_id)
        document.storage_key = key
        if size is not None:
            document.size = size
        db.session.commit()
        db.session.remove()


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("../uploads-evil/secret", id="path-traversal-tampered-key-sibling-prefix"),
        pytest.param("{secret_abs}", id="path-traversal-tampered-key-absolute"),
        pytest.param("{key}/../../uploads-evil/{key}", id="path-traversal-tampered-key-dotdot"),
        pytest.param("..\\uploads-evil\\secret", id="path-traversal-tampered-key-backslash"),
    ],
)
def test_a_storage_key_pointing_outside_the_storage_is_never_followed(app, world, key):
    """A row altered by hand or by a bad migration still cannot make the portal read outside."""
    key = key.replace("{secret_abs}", str(world.secret)).replace("{key}", world.storage_key)
    set_storage_key(app, world.document_id, key)
    client = new_client(app, "participant")
    for url in (
        f"/documents/{world.document_id}/support.pdf",
        f"/documents/{world.document_id}/support.pdf?inline=1",
        f"/sessions/{world.slug}/archive.zip",
    ):
        response = client.get(url)
        body = read(response)
        assert_no_forbidden_bytes(body)
        assert response.status_code in {404, 503}, (url, response.status_code)
        assert str(world.storage) not in body.decode("utf-8", "replace")
        assert b"Traceback" not in body


# --- symlinks planted in the storage --------------------------------------------------------


def plant_symlink(world: World, key: str) -> None:
    target = world.storage / key
    target.unlink(missing_ok=True)
    target.symlink_to(world.secret)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("/documents/{doc}/support.pdf", id="symlink-escape-download"),
        pytest.param("/documents/{doc}/support.pdf?inline=1", id="symlink-escape-inline"),
        pytest.param("/sessions/{slug}/archive.zip", id="symlink-escape-session-zip"),
    ],
)
def test_a_symlink_in_place_of_a_stored_file_is_not_served(app, world, url):
    """A symlink named like the document's key, pointing outside, same size: never followed."""
    plant_symlink(world, world.storage_key)
    client = new_client(app, "participant")
    response = client.get(world.fill(url))
    body = read(response)
    assert_no_forbidden_bytes(body)
    assert response.status_code in {404, 503}, response.status_code


def test_symlink_escape_planted_key_is_not_listed_nor_reachable(app, world):
    """A symlink named like a key that no document owns: no URL and no listing shows it."""
    planted = "0123456789abcdef0123456789abcdef"
    plant_symlink(world, planted)
    with app.app_context():
        listed = [obj.key for obj in app.extensions["portal.storage"].objects()]
    assert planted not in listed
    client = new_client(app, "admin")
    for url in (
        f"/documents/{planted}/x.pdf",
        f"/static/{world.storage}/{planted}",
        f"/static/{os.path.relpath(world.storage, PORTAL_DIR / 'static')}/{planted}",
        f"/sessions/{world.slug}/archive.zip",
    ):
        response = client.get(url)
        assert_no_forbidden_bytes(read(response))
        assert response.status_code in {200, 308, 404}, (url, response.status_code)
    for listing in ("/", "/manage", f"/sessions/{world.slug}"):
        page = client.get(listing).get_data(as_text=True)
        assert planted not in page, f"{listing} lists the planted file"


# --- path traversal spoken over a real socket (no client-side normalisation) ----------------


@pytest.fixture
def live(app) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def raw_request(address: str, request_line: str, headers: dict, body: bytes = b"") -> tuple:
    """Send bytes as written, read the status line, headers and body."""
    host, port = address.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        connection.putrequest(
            request_line.split(" ", 1)[0],
            request_line.split(" ", 1)[1],
            skip_host=False,
            skip_accept_encoding=True,
        )
        for name, value in {"Connection": "close", **headers}.items():
            connection.putheader(name, value)
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/static/../../pyproject.toml", id="path-traversal-raw-http-static-dotdot"),
        pytest.param("/static/..%2f..%2fpyproject.toml", id="path-traversal-raw-http-static-%2f"),
        pytest.param(
            "/static/%2e%2e/%2e%2e/pyproject.toml", id="path-traversal-raw-http-static-%2e%2e"
        ),
        pytest.param(
            "/documents/{doc}/../../../uploads-evil/secret", id="path-traversal-raw-http-dotdot"
        ),
        pytest.param("//{secret}", id="path-traversal-raw-http-absolute"),
        pytest.param("/static//{storage}/{key}", id="path-traversal-raw-http-static-storage"),
        pytest.param(
            "/static/{static_to_storage}-evil/secret", id="path-traversal-raw-http-sibling"
        ),
    ],
)
def test_path_traversal_over_raw_http_reads_nothing(app, world, live, path):
    cookie = cookie_of(new_client(app, "participant"))
    status, _, body = raw_request(
        live, f"GET {world.fill(path)}", {"Cookie": f"{SESSION_COOKIE}={cookie}"}
    )
    assert_no_forbidden_bytes(body)
    assert DOC_MARKER not in body
    assert status in {301, 302, 308, 400, 404}, status


# --- script in uploads ----------------------------------------------------------------------

SVG_SCRIPT = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
SVG_ONLOAD = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect/></svg>'
XHTML = (
    b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><body>'
    + SCRIPT
    + b"</body></html>"
)
XML_XSL = (
    b'<?xml version="1.0"?><?xml-stylesheet type="text/xsl" href="#"?><doc>' + SCRIPT + b"</doc>"
)

REFUSED_UPLOADS = [
    pytest.param("evil.html", HTML_PAGE, "text/html", id="stored-xss-html"),
    pytest.param("evil.htm", HTML_PAGE, "text/html", id="stored-xss-htm"),
    pytest.param("evil.shtml", HTML_PAGE, "text/html", id="stored-xss-shtml"),
    pytest.param("evil.svg", SVG_SCRIPT, "image/svg+xml", id="stored-xss-svg-script"),
    pytest.param("evil.svg", SVG_ONLOAD, "image/svg+xml", id="stored-xss-svg-onload"),
    pytest.param("evil.svgz", gzip.compress(SVG_ONLOAD), "image/svg+xml", id="stored-xss-svgz"),
    pytest.param("evil.xhtml", XHTML, "application/xhtml+xml", id="stored-xss-xhtml"),
    pytest.param("evil.xht", XHTML, "application/xhtml+xml", id="stored-xss-xht"),
    pytest.param("evil.xml", XML_XSL, "text/xml", id="stored-xss-xml"),
    pytest.param("evil.xsl", XML_XSL, "text/xsl", id="stored-xss-xsl"),
    pytest.param("evil.js", b"alert(1)", "text/javascript", id="stored-xss-javascript"),
    pytest.param("evil.mht", b"MIME-Version: 1.0\r\n\r\n" + HTML_PAGE, "", id="stored-xss-mht"),
    pytest.param("EVIL.HTML", HTML_PAGE, "text/html", id="stored-xss-uppercase-extension"),
    pytest.param("evil.svg.", SVG_ONLOAD, "image/svg+xml", id="stored-xss-trailing-dot"),
    pytest.param("evil.html ", HTML_PAGE, "text/html", id="stored-xss-trailing-space"),
    pytest.param("evil.txt.html", HTML_PAGE, "text/plain", id="stored-xss-double-extension"),
    pytest.param(
        "evil\u202elmth.pdf", HTML_PAGE, "application/pdf", id="stored-xss-bidi-override-name"
    ),
    pytest.param("evil.png", SVG_ONLOAD, "image/png", id="polyglot-svg-claiming-png"),
    pytest.param("evil.pdf", HTML_PAGE, "application/pdf", id="polyglot-html-claiming-pdf"),
    pytest.param("evil.jpg", HTML_PAGE, "image/jpeg", id="polyglot-html-claiming-jpeg"),
    pytest.param("evil.gif", SVG_SCRIPT, "image/gif", id="polyglot-svg-claiming-gif"),
    pytest.param("evil.docx", HTML_PAGE, "application/msword", id="polyglot-html-claiming-docx"),
    pytest.param("evil.html", HTML_PAGE, "application/pdf", id="lying-content-type-html-as-pdf"),
    pytest.param("evil.svg", SVG_SCRIPT, "image/png", id="lying-content-type-svg-as-png"),
    pytest.param(
        "evil.txt",
        b"\xff\xfe" + HTML_PAGE.decode().encode("utf-16-le"),
        "text/plain",
        id="charset-sniffing-utf16-html-as-txt",
    ),
]


@pytest.mark.parametrize(("name", "content", "ctype"), REFUSED_UPLOADS)
def test_script_in_uploads_is_refused_and_nothing_is_stored(app, storage_dir, name, content, ctype):
    client = new_client(app, "facilitator")
    response = post_upload(client, file_part(name, content, ctype))
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "Rejected" in page
    assert_no_injected_markup(page)
    assert_nothing_stored(app, storage_dir)


PNG_POLYGLOT = b"\x89PNG\r\n\x1a\n" + HTML_PAGE
GIF_POLYGLOT = b"GIF89a" + HTML_PAGE
JPEG_POLYGLOT = b"\xff\xd8\xff\xe0" + HTML_PAGE
WEBP_POLYGLOT = b"RIFF\x40\x00\x00\x00WEBPVP8 " + HTML_PAGE
PDF_POLYGLOT = HTML_PAGE + b"\n%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"

INERT_UPLOADS = [
    pytest.param("notes.txt", HTML_PAGE, "text/html", "text/plain", id="stored-xss-txt-of-html"),
    pytest.param("table.csv", HTML_PAGE, "text/csv", "text/csv", id="stored-xss-csv-of-html"),
    pytest.param("notes.md", HTML_PAGE, "text/html", "text/markdown", id="stored-xss-md-of-html"),
    pytest.param(
        "evil.html.txt", HTML_PAGE, "text/html", "text/plain", id="stored-xss-html-dot-txt"
    ),
    pytest.param(
        "utf7.txt",
        b"+ADw-script+AD4-alert(1)+ADw-/script+AD4-",
        "text/plain; charset=utf-7",
        "text/plain",
        id="charset-sniffing-utf7-txt",
    ),
    pytest.param("photo.png", PNG_POLYGLOT, "text/html", "image/png", id="polyglot-png-html"),
    pytest.param("anim.gif", GIF_POLYGLOT, "image/gif", "image/gif", id="polyglot-gif-html"),
    pytest.param("photo.jpg", JPEG_POLYGLOT, "image/jpeg", "image/jpeg", id="polyglot-jpeg-html"),
    pytest.param("photo.webp", WEBP_POLYGLOT, "image/webp", "image/webp", id="polyglot-webp-html"),
    pytest.param(
        "support.pdf", PDF_POLYGLOT, "text/html", "application/pdf", id="polyglot-pdf-html"
    ),
    pytest.param(
        "photo.png", PNG_POLYGLOT, "image/svg+xml", "image/png", id="lying-content-type-svg-png"
    ),
    pytest.param(
        "notes.txt",
        HTML_PAGE,
        "application/xhtml+xml",
        "text/plain",
        id="lying-content-type-xhtml-txt",
    ),
    pytest.param(
        "support.pdf",
        PDF,
        "text/html; charset=utf-8",
        "application/pdf",
        id="lying-content-type-html-pdf",
    ),
]


@pytest.mark.parametrize(("name", "content", "ctype", "served_type"), INERT_UPLOADS)
def test_accepted_hostile_upload_is_served_inert(
    app, storage_dir, name, content, ctype, served_type
):
    client = new_client(app, "facilitator")
    response = post_upload(client, file_part(name, content, ctype))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert_no_injected_markup(response.get_data(as_text=True))
    document = only_document(app)
    assert document.content_type == served_type, "the part's Content-Type was trusted"
    extension = name.rsplit(".", 1)[1]
    url = f"/documents/{document.id}/{quote(document.original_name)}"
    reader = new_client(app, "participant")
    for query, inline in (("", False), ("?inline=1", extension in INLINE_EXTENSIONS)):
        served = reader.get(url + query)
        assert read(served) == content
        assert_inert_file_response(served, inline=inline, media_type=served_type)


# --- markup in names and titles, rendered everywhere ----------------------------------------

MARKUP_PAYLOADS = [
    pytest.param(
        "<script>window.__pwned=1</script>",
        "<script src=data:,alert(1)>.pdf",
        id="stored-xss-script-tag",
    ),
    pytest.param(
        '"><img src=x onerror=alert(1)>', '"><img src=x onerror=alert(1)>.pdf', id="stored-xss-dq"
    ),
    pytest.param("'><svg onload=alert(1)>", "'><svg onload=alert(1)>.pdf", id="stored-xss-sq"),
    pytest.param(
        '<iframe srcdoc="&lt;script&gt;alert(1)&lt;/script&gt;">',
        "<iframe srcdoc=x onload=alert(1)>.pdf",
        id="stored-xss-iframe",
    ),
    pytest.param(
        '<a href="javascript:alert(1)">x</a>',
        "<a href=javascript:alert(1)>x.pdf",
        id="stored-xss-javascript-link",
    ),
    pytest.param("&lt;b&gt;pre-escaped", "&lt;b&gt;.pdf", id="stored-xss-double-escaping"),
]


@pytest.mark.parametrize(("payload", "filename"), MARKUP_PAYLOADS)
def test_markup_in_names_and_titles_is_shown_escaped_everywhere(app, payload, filename):
    admin = new_client(app, "admin")
    pages: dict[str, str] = {}

    # A session whose every text field carries the payload.
    token = csrf_token(admin, "/manage/sessions/new")
    created = admin.post(
        "/manage/sessions/new",
        data={
            "csrf_token": token,
            "title": f"S {payload}",
            "facilitators": f"F {payload}",
            "description": f"D {payload}",
            "starts_at": "2020-11-21T10:00",
            "ends_at": "2020-11-21T12:00",
            "slug": "",
            "meeting_url": "",
        },
    )
    assert created.status_code == 303, created.get_data(as_text=True)
    with app.app_context():
        meeting = db.session.scalars(db.select(Meeting)).one()
        meeting_id, slug = meeting.id, meeting.slug
        db.session.remove()

    # One accepted upload (file name, title, description, tags) and one refused file name.
    body, ctype = multipart(
        part("csrf_token", csrf_token(admin, "/manage/upload")),
        part("session", str(meeting_id)),
        part("tags", f"T {payload}"),
        part("title", f"Title {payload}"),
        part("description", f"Desc {payload}"),
        file_part(filename.replace('"', "%22"), PDF, "application/pdf"),
    )
    result = admin.post("/manage/upload", data=body, content_type=ctype)
    assert result.status_code == 200, result.get_data(as_text=True)
    pages["upload result"] = result.get_data(as_text=True)
    refused_name = filename.replace('"', "%22") + ".html"
    refused = post_upload(admin, file_part(refused_name, HTML_PAGE))
    assert refused.status_code == 400
    pages["upload result (refused)"] = refused.get_data(as_text=True)
    document = only_document(app)

    # The admin's pages: the event's title and a facilitator's name carry it too.
    token = csrf_token(admin, "/manage/settings")
    saved = admin.post("/manage/settings", data={"csrf_token": token, "title": f"E {payload}"})
    assert saved.status_code == 303
    token = csrf_token(admin, "/manage/facilitators")
    made = admin.post(
        "/manage/facilitators",
        data={
            "csrf_token": token,
            "email": "new@example.org",
            "name": f"N {payload}",
            "password": "long-enough-password",
        },
    )
    assert made.status_code == 303

    for url in (
        "/",
        f"/?q={quote(payload)}",
        f"/sessions/{slug}",
        "/manage",
        f"/manage/documents/{document.id}/edit",
        f"/manage/sessions/{meeting_id}/edit",
        "/manage/settings",
        "/manage/facilitators",
    ):
        response = admin.get(url)
        assert response.status_code == 200, url
        pages[url] = response.get_data(as_text=True)
    pages["gate (anonymous)"] = new_client(app, "anonymous").get("/access").get_data(as_text=True)
    pages["programme (participant)"] = new_client(app, "participant").get("/").text
    token = csrf_token(admin, "/manage/upload")
    deleted = admin.post(
        f"/manage/documents/{document.id}/delete",
        data={"csrf_token": token},
        follow_redirects=True,
    )
    pages["flash after delete"] = deleted.get_data(as_text=True)

    expected_text = {
        "upload result": document.original_name,
        "upload result (refused)": refused_name,
    }
    for where, page in pages.items():
        try:
            shown = assert_no_injected_markup(page).everything_shown()
        except AssertionError as error:
            raise AssertionError(f"{where}: {error}") from None
        # The payload is there, shown as text: the page was really put to the test.
        wanted = expected_text.get(where, payload)
        # Browsers send a quote in a file name as %22, and Werkzeug turns it back into '"'.
        assert wanted in shown or wanted.replace("%22", '"') in shown, f"{where}: {wanted!r}"


def test_template_injection_in_titles_is_shown_literally(app):
    admin = new_client(app, "admin")
    response = post_upload(
        admin,
        file_part("{{7*7}}.pdf", PDF, "application/pdf"),
        title="{{ 7*7 }} {{ config.SECRET_KEY }}",
    )
    assert response.status_code == 200
    page = admin.get("/").get_data(as_text=True)
    assert "{{ 7*7 }} {{ config.SECRET_KEY }}" in page
    assert "test-secret-key" not in page
    assert "{{7*7}}.pdf" in admin.get("/manage").get_data(as_text=True)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("javascript://example.org/%0Aalert(1)", id="stored-xss-javascript-scheme"),
        pytest.param("JaVaScRiPt://example.org/%0Aalert(1)", id="stored-xss-javascript-mixed"),
        pytest.param("data://text/html,<script>alert(1)</script>", id="stored-xss-data-scheme"),
        pytest.param("vbscript://example.org/msgbox(1)", id="stored-xss-vbscript-scheme"),
        pytest.param('https://ok.example/"><script>alert(1)</script>', id="stored-xss-link-quote"),
    ],
)
def test_meeting_link_cannot_carry_script(app, url):
    admin = new_client(app, "admin")
    response = admin.post(
        "/manage/sessions/new",
        data={
            "csrf_token": csrf_token(admin, "/manage/sessions/new"),
            "title": "Visio",
            "starts_at": "2020-11-21T10:00",
            "ends_at": "2020-11-21T12:00",
            "meeting_url": url,
        },
    )
    assert response.status_code in (303, 400)
    with app.app_context():
        slugs = db.session.scalars(db.select(Meeting.slug)).all()
        db.session.remove()
    for slug in slugs:
        assert_no_injected_markup(admin.get(f"/sessions/{slug}").get_data(as_text=True))


REFLECTED = [
    pytest.param("/access?next=/%22%3E%3Cscript%3Ealert(1)%3C/script%3E", id="reflected-xss-next"),
    pytest.param(
        "/login?next=/%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E", id="reflected-xss-login"
    ),
    pytest.param("/access?lang=%22%3E%3Cscript%3Ealert(1)%3C/script%3E", id="reflected-xss-lang"),
    pytest.param("/sessions/%3Cscript%3Ealert(1)%3C%2Fscript%3E", id="reflected-xss-404-slug"),
    pytest.param("/?tag=%22%3E%3Csvg%20onload%3Dalert(1)%3E", id="reflected-xss-tag"),
    pytest.param(
        "/?q=%3Csvg%20onload%3Dalert(1)%3E&x=%22%3E%3Cscript%3E", id="reflected-xss-extra-param"
    ),
    pytest.param(
        "/access?next=javascript:alert(1)//%0a", id="reflected-xss-javascript-next-in-form"
    ),
]


@pytest.mark.parametrize("url", REFLECTED)
def test_reflected_markup_in_the_address_is_never_rendered(app, url):
    client = new_client(app, "participant")
    response = client.get(url)
    assert response.status_code in (200, 404)
    assert_no_injected_markup(response.get_data(as_text=True))


# --- every protected route, as someone who must not pass ------------------------------------

READ_ROUTES = [
    "/",
    "/leave",
    "/sessions/{slug}",
    "/documents/{doc}/support.pdf",
    "/documents/{doc}/support.pdf?inline=1",
    "/sessions/{slug}/archive.zip",
    "/preview/{doc}",
]
MANAGE_PAGES = [
    "/manage",
    "/manage/upload",
    "/manage/documents/{doc}/edit",
    "/manage/sessions/new",
    "/manage/sessions/{meeting}/edit",
    "/manage/settings",
    "/manage/facilitators",
]


def set_enabled(app: Flask, facilitator_id: int, enabled: bool) -> None:
    with app.app_context():
        db.session.get(Facilitator, facilitator_id).enabled = enabled
        db.session.commit()
        db.session.remove()


def outsider(app: Flask, world: World, kind: str) -> FlaskClient:
    """A browser that must not pass: anonymous, or holding a cookie that no longer counts."""
    if kind in {"anonymous", "participant"}:
        return new_client(app, kind)
    if kind.startswith("stale-cookie-after-password-change"):
        saved = cookie_of(new_client(app, "participant"))
        with app.app_context():
            set_shared_password("another-shared-password")
            if kind.endswith("back"):
                # Changed, then changed back: the old cookie still belongs to the past.
                set_shared_password(SHARED_PASSWORD)
            db.session.remove()
        return client_with_cookie(app, saved)
    if kind == "stale-cookie-after-logout":
        facilitator = new_client(app, "admin")
        saved = cookie_of(facilitator)
        token = csrf_token(facilitator, "/manage/upload")
        assert facilitator.post("/logout", data={"csrf_token": token}).status_code == 303
        return client_with_cookie(app, saved)
    if kind == "stale-cookie-after-account-disabled":
        facilitator = new_client(app, "facilitator")
        saved = cookie_of(facilitator)
        set_enabled(app, world.facilitator_id, False)
        return client_with_cookie(app, saved)
    if kind == "forged-cookie":
        payload = {"_user_id": f"f:{world.admin_id}:1", "_fresh": True, "_id": "x"}
        return client_with_cookie(app, forged_cookie(payload))
    if kind == "forged-cookie-participant":
        return client_with_cookie(app, forged_cookie({"_user_id": "p:1", "_fresh": True}))
    raise AssertionError(kind)


def assert_sent_away(response, to: str) -> None:
    body = read(response)
    assert response.status_code in (302, 303), response.status_code
    assert urlsplit(response.headers["Location"]).path == to
    assert DOC_MARKER not in body
    assert MEETING_TITLE.encode() not in body


READ_OUTSIDERS = [
    "anonymous",
    "stale-cookie-after-password-change",
    "stale-cookie-after-password-change-and-back",
    "stale-cookie-after-logout",
    "forged-cookie",
    "forged-cookie-participant",
]


@pytest.mark.parametrize("route", READ_ROUTES)
@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(k, id=k if k.startswith(("stale", "forged")) else "auth-bypass-" + k)
        for k in READ_OUTSIDERS
    ],
)
def test_protected_reads_send_outsiders_to_the_gate(app, world, kind, route):
    client = outsider(app, world, kind)
    saved = client.get_cookie(SESSION_COOKIE)
    assert_sent_away(client.get(world.fill(route)), "/access")
    if saved is not None:
        client.set_cookie(SESSION_COOKIE, saved.value)
    assert_sent_away(client.head(world.fill(route)), "/access")


MANAGE_OUTSIDERS = [
    "anonymous",
    "participant",
    "stale-cookie-after-logout",
    "stale-cookie-after-account-disabled",
    "forged-cookie",
]


@pytest.mark.parametrize("route", MANAGE_PAGES)
@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(k, id=k if k.startswith(("stale", "forged")) else "auth-bypass-" + k)
        for k in MANAGE_OUTSIDERS
    ],
)
def test_manage_pages_send_outsiders_to_login(app, world, kind, route):
    client = outsider(app, world, kind)
    response = client.get(world.fill(route))
    assert_sent_away(response, "/login")
    assert FACILITATOR_EMAIL not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/manage/", id="auth-bypass-trailing-slash"),
        pytest.param("/manage/upload/", id="auth-bypass-trailing-slash-upload"),
        pytest.param("//manage", id="auth-bypass-double-slash"),
        pytest.param("/MANAGE", id="auth-bypass-case"),
        pytest.param("/manage%2fsettings", id="auth-bypass-encoded-slash"),
        pytest.param("/documents/{doc}/support.pdf/", id="auth-bypass-trailing-slash-document"),
        pytest.param("//documents/{doc}/support.pdf", id="auth-bypass-double-slash-document"),
        pytest.param("/./documents/{doc}/support.pdf", id="auth-bypass-dot-segment-document"),
        pytest.param("/static/../documents/{doc}/x", id="auth-bypass-static-dotdot-document"),
        pytest.param("/documents/{doc}/support.pdf;x=1", id="auth-bypass-matrix-parameter"),
        pytest.param("/sessions/{slug}/archive.zip/", id="auth-bypass-trailing-slash-zip"),
    ],
)
def test_path_variants_do_not_bypass_the_checks(app, world, path):
    client = new_client(app, "anonymous")
    for method in ("GET", "HEAD", "OPTIONS", "POST"):
        response = client.open(world.fill(path), method=method)
        body = read(response)
        assert DOC_MARKER not in body, method
        assert MEETING_TITLE.encode() not in body, method
        assert FACILITATOR_EMAIL.encode() not in body, method
        if method == "OPTIONS":
            assert body == b"" or response.mimetype == "text/html"
        else:
            assert response.status_code in {302, 303, 308, 400, 404, 405}, (method, response)


# --- every mutating route: CSRF, GET, and outsiders -----------------------------------------


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    role: str
    fields: Callable[[World], dict]
    post_only: bool


def _pdf_upload(w: World) -> dict:
    return {"files": [(io.BytesIO(PDF), "injected.pdf")], "session": "", "tags": "x", "title": "I"}


def _session_fields(w: World) -> dict:
    return {
        "title": "Injected session",
        "starts_at": "2020-11-25T10:00",
        "ends_at": "2020-11-25T12:00",
        "slug": "",
        "description": "",
        "facilitators": "",
        "meeting_url": "",
    }


MUTATIONS = [
    Mutation(
        "access", "/access", "anonymous", lambda w: {"password": SHARED_PASSWORD}, post_only=False
    ),
    Mutation(
        "login",
        "/login",
        "anonymous",
        lambda w: {"email": FACILITATOR_EMAIL, "password": ACCOUNT_PASSWORD},
        post_only=False,
    ),
    Mutation("logout", "/logout", "facilitator", lambda w: {}, post_only=True),
    # GET /leave only shows the confirmation page.
    Mutation("leave", "/leave", "participant", lambda w: {}, post_only=False),
    Mutation("upload", "/manage/upload", "facilitator", _pdf_upload, post_only=False),
    Mutation(
        "edit-document",
        "/manage/documents/{doc}/edit",
        "facilitator",
        lambda w: {"title": "Hijacked", "description": "x", "session": "", "tags": "x"},
        post_only=False,
    ),
    Mutation(
        "replace-document",
        "/manage/documents/{doc}/replace",
        "facilitator",
        lambda w: {"file": (io.BytesIO(PNG), "swapped.png")},
        post_only=True,
    ),
    Mutation(
        "delete-document",
        "/manage/documents/{doc}/delete",
        "facilitator",
        lambda w: {},
        post_only=True,
    ),
    Mutation("new-session", "/manage/sessions/new", "facilitator", _session_fields, False),
    Mutation(
        "edit-session", "/manage/sessions/{meeting}/edit", "facilitator", _session_fields, False
    ),
    Mutation(
        "delete-session",
        "/manage/sessions/{meeting}/delete",
        "facilitator",
        lambda w: {},
        post_only=True,
    ),
    Mutation(
        "settings",
        "/manage/settings",
        "admin",
        lambda w: {
            "title": "Hijacked event",
            "password": "hijacked-password",
            "password_confirm": "hijacked-password",
        },
        post_only=False,
    ),
    Mutation(
        "create-facilitator",
        "/manage/facilitators",
        "admin",
        lambda w: {
            "email": "intruder@example.org",
            "name": "Intruder",
            "password": "intruder-password",
            "is_admin": "y",
        },
        post_only=False,
    ),
    Mutation(
        "facilitator-rights",
        "/manage/facilitators/{facilitator}",
        "admin",
        lambda w: {"enabled": "y", "is_admin": "y"},
        post_only=True,
    ),
]
MUTATION_IDS = [m.name for m in MUTATIONS]


def send(client: FlaskClient, mutation: Mutation, world: World, token: str | None):
    data = mutation.fields(world)
    if token is not None:
        data["csrf_token"] = token
    return client.post(world.fill(mutation.path), data=data)


@pytest.mark.parametrize("mutation", MUTATIONS, ids=MUTATION_IDS)
@pytest.mark.parametrize(
    "attack", ["csrf-missing-token", "csrf-foreign-session-token", "csrf-by-get"]
)
def test_mutating_routes_refuse_requests_without_this_sessions_token(
    app, world, storage_dir, mutation, attack
):
    client = new_client(app, mutation.role)
    before = observe(app, storage_dir, client)
    if attack == "csrf-missing-token":
        response = send(client, mutation, world, None)
        assert response.status_code == 400
    elif attack == "csrf-foreign-session-token":
        # A token the attacker got from a session of their own, of the same kind.
        foreign = token_of(new_client(app, mutation.role), mutation.role)
        assert foreign != token_of(client, mutation.role)
        response = send(client, mutation, world, foreign)
        assert response.status_code == 400
    else:
        fields = {k: v for k, v in mutation.fields(world).items() if isinstance(v, str)}
        response = client.get(world.fill(mutation.path), query_string=fields)
        assert response.status_code == (405 if mutation.post_only else 200)
    read(response)
    assert observe(app, storage_dir, client) == before


@pytest.mark.parametrize(
    "mutation", MUTATIONS, ids=[f"control-valid-token-{name}" for name in MUTATION_IDS]
)
def test_control_the_same_mutations_with_a_valid_token_do_change_things(
    app, world, storage_dir, mutation
):
    client = new_client(app, mutation.role)
    before = observe(app, storage_dir, client)
    response = send(client, mutation, world, token_of(client, mutation.role))
    assert response.status_code in (200, 303), response.get_data(as_text=True)
    assert observe(app, storage_dir, client) != before


MANAGE_MUTATIONS = [m for m in MUTATIONS if m.path.startswith("/manage")]


@pytest.mark.parametrize("mutation", MANAGE_MUTATIONS, ids=[m.name for m in MANAGE_MUTATIONS])
@pytest.mark.parametrize(
    "kind",
    ["auth-bypass-anonymous", "auth-bypass-participant", "stale-cookie-after-logout"],
)
def test_outsiders_cannot_mutate_even_with_their_own_valid_token(
    app, world, storage_dir, mutation, kind
):
    client = outsider(app, world, kind.removeprefix("auth-bypass-"))
    token = csrf_token(client, "/login")
    before = observe(app, storage_dir, client)
    response = send(client, mutation, world, token)
    read(response)
    assert response.status_code in (302, 303)
    assert urlsplit(response.headers["Location"]).path == "/login"
    assert observe(app, storage_dir, client) == before


#: Routes anyone may use: the gate, the login form, the health check, static files.
PUBLIC_ENDPOINTS = {"static", "health.healthz", "gate.access", "auth.login"}
#: The resumable-upload endpoints have their own corpus (tests/security/test_tus_attacks.py).
TUS_ENDPOINTS = {"tus.create", "tus.upload"}


def test_auth_bypass_the_corpus_covers_every_route_of_the_app(app):
    """auth-bypass: a route added later without a place in this corpus fails here."""
    dummy = World(1, "0" * 32, 1, "slug", 2, 3, Path("/s"), Path("/s-evil"), Path("/s-evil/x"))
    adapter = app.url_map.bind("localhost")
    covered = {"GET": set(), "POST": set()}
    for template in READ_ROUTES + MANAGE_PAGES:
        covered["GET"].add(adapter.match(dummy.fill(template).split("?")[0], "GET")[0])
    for mutation in MUTATIONS:
        covered["POST"].add(adapter.match(dummy.fill(mutation.path), "POST")[0])
    missing = []
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) & {"GET", "POST"}):
            if rule.endpoint not in covered[method] | PUBLIC_ENDPOINTS | TUS_ENDPOINTS:
                missing.append(f"{method} {rule.rule}")
    assert missing == [], "routes the attack corpus does not exercise"


def test_csrf_token_issued_before_login_is_refused_after_it(app, world, storage_dir):
    """Session fixation of the token: the pre-login token dies with the anonymous session."""
    client = new_client(app, "anonymous")
    early = csrf_token(client, "/login")
    token = csrf_token(client, "/login")
    response = client.post(
        "/login",
        data={"email": FACILITATOR_EMAIL, "password": ACCOUNT_PASSWORD, "csrf_token": token},
    )
    assert response.status_code == 303
    before = observe(app, storage_dir, client)
    mutation = next(m for m in MUTATIONS if m.name == "new-session")
    assert send(client, mutation, world, early).status_code == 400
    assert observe(app, storage_dir, client) == before


def test_csrf_over_https_with_a_foreign_referer_is_refused(app, world, storage_dir):
    client = new_client(app, "facilitator")
    token = token_of(client, "facilitator")
    before = observe(app, storage_dir, client)
    mutation = next(m for m in MUTATIONS if m.name == "new-session")
    response = client.post(
        world.fill(mutation.path),
        data={**mutation.fields(world), "csrf_token": token},
        base_url="https://localhost",
        headers={"Referer": "https://evil.example/form", "Origin": "https://evil.example"},
    )
    assert response.status_code == 400
    assert observe(app, storage_dir, client) == before


# --- open redirects -------------------------------------------------------------------------


def browser_destination(location: str) -> str:
    """Where a browser goes with this Location (WHATWG URL parsing, roughly)."""
    cleaned = location.strip("".join(chr(c) for c in range(0x21)))
    cleaned = re.sub(r"[\t\n\r]", "", cleaned).replace("\\", "/")
    return urljoin("http://localhost/access", cleaned)


OPEN_REDIRECTS = [
    pytest.param("/\\/evil.example", id="open-redirect-slash-backslash-slash"),
    pytest.param("https:/\\evil.example", id="open-redirect-scheme-backslash"),
    pytest.param("HTTPS://evil.example", id="open-redirect-uppercase-scheme"),
    pytest.param("http://localhost@evil.example", id="open-redirect-userinfo"),
    pytest.param("//evil.example%23@localhost", id="open-redirect-protocol-relative-fragment"),
    pytest.param("\x00//evil.example", id="open-redirect-leading-nul"),
    pytest.param("/\x0b/evil.example", id="open-redirect-vertical-tab"),
    pytest.param("\u3000//evil.example", id="open-redirect-ideographic-space"),
    pytest.param("\uff0f\uff0fevil.example", id="open-redirect-fullwidth-solidus"),
    pytest.param("data:text/html,<script>alert(1)</script>", id="open-redirect-data-url"),
    pytest.param("/%2F%2Fevil.example", id="open-redirect-encoded-slashes"),
    pytest.param("/.//evil.example", id="open-redirect-dot-segment"),
    pytest.param("/%0d%0aLocation:%20https://evil.example", id="open-redirect-encoded-crlf"),
]


@pytest.mark.parametrize("endpoint", ["/access", "/login"], ids=["gate", "login"])
@pytest.mark.parametrize("target", OPEN_REDIRECTS)
def test_open_redirect_in_next_stays_on_the_portal(app, endpoint, target):
    client = new_client(app, "anonymous")
    token = csrf_token(client, endpoint)
    form = {"csrf_token": token}
    if endpoint == "/access":
        form["password"] = SHARED_PASSWORD
    else:
        form.update(email=FACILITATOR_EMAIL, password=ACCOUNT_PASSWORD)
    # ``next`` in the query string, as the gate receives it from a protected page.
    response = client.post(endpoint, query_string={"next": target}, data=form)
    assert response.status_code == 303
    location = response.headers["Location"]
    assert_no_header_injection(response)
    destination = urlsplit(browser_destination(location))
    assert destination.scheme == "http"
    assert destination.netloc == "localhost", f"{location!r} leaves the portal"


# --- header injection -----------------------------------------------------------------------

CRLF_NAMES = [
    pytest.param(
        'filename="report%0D%0AX-Injected: 1%0D%0A.pdf"', id="header-injection-encoded-crlf-name"
    ),
    pytest.param(
        "filename*=UTF-8''report%0D%0AX-Injected%3A%201%0D%0A.pdf",
        id="header-injection-rfc5987-crlf-name",
    ),
    pytest.param(
        "filename*=UTF-8''report%E2%80%A8X-Injected%3A%201.pdf",
        id="header-injection-line-separator-name",
    ),
    pytest.param(
        "filename*=UTF-8''report%C2%85X-Injected%3A%201.pdf", id="header-injection-nel-name"
    ),
    pytest.param(
        'filename="evil.html\\"; filename=\\"x.pdf"', id="header-injection-quote-smuggling"
    ),
    pytest.param('filename="a; filename=evil.html; b.pdf"', id="header-injection-semicolons"),
    pytest.param(
        "filename*=UTF-8''%C3%A9t%C3%A9%22%3B%20filename%3D%22evil.html%22%3B%20x%3D.pdf",
        id="header-injection-unicode-quote-smuggling",
    ),
]


@pytest.mark.parametrize("disposition", CRLF_NAMES)
def test_crlf_and_quotes_in_file_names_never_reach_the_headers(app, storage_dir, disposition):
    client = new_client(app, "facilitator")
    body, ctype = upload_form(
        csrf_token(client, "/manage/upload"),
        part("files", PDF, "; " + disposition, "application/pdf"),
    )
    response = client.post("/manage/upload", data=body, content_type=ctype)
    assert_no_header_injection(response)
    assert response.status_code == 200, response.get_data(as_text=True)
    document = only_document(app)
    assert not re.search(r"[\x00-\x1f\x7f\x85\u2028\u2029]", document.original_name)
    reader = new_client(app, "participant")
    for query in ("", "?inline=1"):
        served = reader.get(f"/documents/{document.id}/x.pdf{query}")
        read(served)
        assert_no_header_injection(served)
        assert_single_filename(served, document.original_name)


def test_header_injection_raw_crlf_in_a_multipart_file_name(app, storage_dir):
    """A raw CR LF inside the part's header: refused, or stored without the line break."""
    client = new_client(app, "facilitator")
    body, ctype = upload_form(
        csrf_token(client, "/manage/upload"),
        part("files", PDF, '; filename="report\r\nX-Injected: 1\r\n.pdf"', "application/pdf"),
    )
    response = client.post("/manage/upload", data=body, content_type=ctype)
    assert_no_header_injection(response)
    with app.app_context():
        documents = db.session.scalars(db.select(Document)).all()
        db.session.expunge_all()
        db.session.remove()
    for document in documents:
        assert not re.search(r"[\x00-\x1f]", document.original_name)
        served = new_client(app, "participant").get(f"/documents/{document.id}/x")
        read(served)
        assert_no_header_injection(served)
        assert_single_filename(served, document.original_name)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(
            "/documents/{doc}/x%0d%0aX-Injected:%201%0d%0a.pdf", id="header-injection-url-name"
        ),
        pytest.param(
            "/documents/{doc}/x.pdf?inline=1%0d%0aX-Injected:%201", id="header-injection-query"
        ),
        pytest.param("/?lang=en%0d%0aSet-Cookie:%20injected=1", id="header-injection-lang"),
        pytest.param(
            "/access?next=/%0d%0aSet-Cookie:%20injected=1", id="header-injection-next-on-get"
        ),
        pytest.param("/sessions/{slug}%0d%0aX-Injected:%201", id="header-injection-slug"),
    ],
)
def test_header_injection_through_the_address(app, world, url):
    client = new_client(app, "participant")
    response = client.get(world.fill(url))
    read(response)
    assert_no_header_injection(response)
    if response.headers.get("Content-Disposition"):
        assert_single_filename(response, "support.pdf")


def test_header_injection_through_accept_language(app, world):
    client = new_client(app, "participant")
    client.delete_cookie("lang")
    response = client.get("/", environ_overrides={"HTTP_ACCEPT_LANGUAGE": "en\r\nX-Injected: 1"})
    assert response.status_code == 200
    assert_no_header_injection(response)


# --- bodies too large, too many parts -------------------------------------------------------


@pytest.fixture
def sized_app(app, app_config) -> Iterator[Callable[[int], Flask]]:
    """Second apps on the instance the ``app`` fixture prepared, with a chosen body limit."""
    made: list[Flask] = []

    def make(limit: int) -> Flask:
        application = create_app({**app_config, "MAX_CONTENT_LENGTH": limit})
        made.append(application)
        return application

    yield make
    for application in made:
        with application.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.mark.parametrize(
    ("endpoint", "excess", "expected"),
    [
        pytest.param("upload", 1, 413, id="dos-body-one-byte-over-upload"),
        pytest.param("replace", 1, 413, id="dos-body-one-byte-over-replace"),
        pytest.param("upload", 0, 200, id="control-exact-limit-upload"),
        pytest.param("replace", 0, 303, id="control-exact-limit-replace"),
    ],
)
def test_one_byte_over_the_limit_is_refused_and_stores_nothing(
    app, world, storage_dir, sized_app, endpoint, excess, expected
):
    facilitator = new_client(app, "facilitator")
    token = csrf_token(facilitator, "/manage/upload")
    content = b"%PDF-1.4\n" + b"x" * 4000
    if endpoint == "upload":
        path = "/manage/upload"
        body, ctype = upload_form(token, file_part("big.pdf", content))
    else:
        path = f"/manage/documents/{world.document_id}/replace"
        body, ctype = multipart(
            part("csrf_token", token), file_part("big.pdf", content, field="file")
        )
    before = db_state(app)
    small = sized_app(len(body) - excess)
    client = client_with_cookie(small, cookie_of(facilitator))
    response = client.post(path, data=body, content_type=ctype)
    assert response.status_code == expected
    if expected == 413:
        assert response.mimetype == "text/html"
        assert "Traceback" not in response.get_data(as_text=True)
        assert db_state(app) == before
        assert stored_files(storage_dir) == [world.storage_key]
    else:
        assert db_state(app) != before


def streamed_post(
    app: Flask,
    path: str,
    form: str | bytes,
    cookie: str,
    content_type: str = "application/x-www-form-urlencoded",
) -> int:
    """POST a body the way gunicorn or Werkzeug's server hand over a chunked one: no length."""
    environ = EnvironBuilder(
        path=path,
        method="POST",
        data=form.encode() if isinstance(form, str) else form,
        content_type=content_type,
        headers={"Cookie": f"{SESSION_COOKIE}={cookie}"},
    ).get_environ()
    del environ["CONTENT_LENGTH"]
    environ["wsgi.input_terminated"] = True
    app_iter, status, _ = run_wsgi_app(app, environ, buffered=True)
    b"".join(app_iter)
    return int(status.split()[0])


@pytest.mark.parametrize(
    ("path", "padding", "expected"),
    [
        pytest.param("/access", 1024 * 1024, 413, id="dos-body-streamed-gate-over-limit"),
        pytest.param("/login", 1024 * 1024, 413, id="dos-body-streamed-login-over-limit"),
        pytest.param("/access", 10, 303, id="control-streamed-gate-under-limit"),
        pytest.param("/login", 10, 303, id="control-streamed-login-under-limit"),
    ],
)
def test_streamed_form_over_the_small_limit_is_refused_not_truncated(app, path, padding, expected):
    """A body without Content-Length (chunked) over 64 KiB gets 413 like any other.

    The right credentials come first and the padding after them: a server that silently
    cut the body at the limit would then sign the request in instead of refusing it.
    """
    client = new_client(app, "anonymous")
    token = csrf_token(client, path)
    form = f"csrf_token={quote(token)}&password={quote(SHARED_PASSWORD)}"
    if path == "/login":
        form = (
            f"csrf_token={quote(token)}&email={quote(FACILITATOR_EMAIL)}"
            f"&password={quote(ACCOUNT_PASSWORD)}"
        )
    form += "&padding=" + "a" * padding
    status = streamed_post(app, path, form, cookie_of(client))
    assert status == expected, f"a streamed {len(form)}-byte body to {path} answered {status}"


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        pytest.param(200_000, 413, id="dos-body-streamed-upload-over-limit"),
        pytest.param(1_000, 200, id="control-streamed-upload-under-limit"),
    ],
)
def test_streamed_upload_over_the_limit_is_refused_and_stores_nothing(
    app, world, storage_dir, sized_app, size, expected
):
    """No Content-Length to check up front: the limit must hold while the body streams in."""
    facilitator = new_client(app, "facilitator")
    body, ctype = upload_form(
        csrf_token(facilitator, "/manage/upload"),
        file_part("big.pdf", b"%PDF-1.4\n" + b"x" * size),
    )
    before = db_state(app)
    small = sized_app(64 * 1024)
    status = streamed_post(small, "/manage/upload", body, cookie_of(facilitator), ctype)
    assert status == expected
    if expected == 413:
        assert db_state(app) == before
        assert stored_files(storage_dir) == [world.storage_key]
    else:
        assert count_rows(app, Document) == 2


def many_parts(token: str, count: int, field: str, as_files: bool) -> tuple[bytes, str]:
    if as_files:
        one = file_part("a.txt", b"x", "text/plain", field=field)
    else:
        one = part(field, "x")
    return multipart(part("csrf_token", token), one * count)


@pytest.mark.parametrize(
    ("role", "path", "field", "as_files"),
    [
        pytest.param("facilitator", "/manage/upload", "files", True, id="dos-body-100k-file-parts"),
        pytest.param("facilitator", "/manage/upload", "tags", False, id="dos-body-100k-fields"),
        pytest.param(
            "facilitator",
            "/manage/documents/{doc}/replace",
            "file",
            True,
            id="dos-body-100k-file-parts-replace",
        ),
        pytest.param("anonymous", "/access", "password", False, id="dos-body-100k-parts-gate"),
        pytest.param("anonymous", "/login", "email", False, id="dos-body-100k-parts-login"),
    ],
)
def test_100000_multipart_parts_are_refused_quickly(
    app, world, storage_dir, role, path, field, as_files
):
    client = new_client(app, role)
    body, ctype = many_parts(token_of(client, role), 100_000, field, as_files)
    before = observe(app, storage_dir, client)
    started = time.monotonic()
    response = client.post(world.fill(path), data=body, content_type=ctype)
    elapsed = time.monotonic() - started
    read(response)
    assert response.status_code in (400, 413)
    # About 1 s for the first thousand parts; all 100,000 would take minutes.
    assert elapsed < 20, f"took {elapsed:.1f} s to refuse"
    assert observe(app, storage_dir, client) == before


@pytest.mark.parametrize(
    ("path", "role", "as_multipart"),
    [
        pytest.param("/access", "anonymous", False, id="dos-body-1mib-password-gate"),
        pytest.param("/login", "anonymous", False, id="dos-body-1mib-password-login"),
        pytest.param("/access", "anonymous", True, id="dos-body-1mib-password-gate-multipart"),
        pytest.param("/login", "anonymous", True, id="dos-body-1mib-password-login-multipart"),
        pytest.param("/manage/sessions/new", "facilitator", False, id="dos-body-1mib-form"),
        pytest.param("/manage/settings", "admin", True, id="dos-body-1mib-settings-multipart"),
    ],
)
def test_huge_form_bodies_get_413(app, world, storage_dir, path, role, as_multipart):
    client = new_client(app, role)
    token = token_of(client, role)
    huge = "a" * (1024 * 1024)
    fields = {
        "csrf_token": token,
        "email": FACILITATOR_EMAIL,
        "password": huge,
        "title": "t",
        "description": huge,
    }
    before = observe(app, storage_dir, client)
    started = time.monotonic()
    if as_multipart:
        body, ctype = multipart(*(part(k, v) for k, v in fields.items()))
        response = client.post(path, data=body, content_type=ctype)
    else:
        response = client.post(path, data=fields)
    assert time.monotonic() - started < 10
    assert response.status_code == 413
    page = response.get_data(as_text=True)
    assert "Traceback" not in page
    assert observe(app, storage_dir, client) == before


# --- every file response: attachment, nosniff, sandbox --------------------------------------


def _zip(*members: tuple[str, bytes], mimetype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        if mimetype:
            archive.writestr(zipfile.ZipInfo("mimetype"), mimetype, zipfile.ZIP_STORED)
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def _tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("notes.txt")
        info.size = 5
        archive.addfile(info, io.BytesIO(b"hello"))
    return buffer.getvalue()


ZEROS = b"\x00" * 64
OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + ZEROS
ISO_MEDIA = b"\x00\x00\x00\x18ftypisom" + ZEROS
EBML = b"\x1a\x45\xdf\xa3" + ZEROS
OGG = b"OggS\x00\x02" + ZEROS
SAMPLES: dict[str, bytes] = {
    "pdf": PDF_POLYGLOT,
    "png": PNG_POLYGLOT,
    "jpg": JPEG_POLYGLOT,
    "jpeg": JPEG_POLYGLOT,
    "gif": GIF_POLYGLOT,
    "webp": WEBP_POLYGLOT,
    "doc": OLE2,
    "xls": OLE2,
    "ppt": OLE2,
    "docx": _zip(("word/document.xml", HTML_PAGE)),
    "xlsx": _zip(("xl/workbook.xml", HTML_PAGE)),
    "pptx": _zip(("ppt/presentation.xml", HTML_PAGE)),
    "odt": _zip(("content.xml", HTML_PAGE), mimetype="application/vnd.oasis.opendocument.text"),
    "ods": _zip(mimetype="application/vnd.oasis.opendocument.spreadsheet"),
    "odp": _zip(mimetype="application/vnd.oasis.opendocument.presentation"),
    "odg": _zip(mimetype="application/vnd.oasis.opendocument.graphics"),
    "epub": _zip(("index.html", HTML_PAGE), mimetype="application/epub+zip"),
    "rtf": b"{\\rtf1\\ansi " + HTML_PAGE + b"}",
    "txt": HTML_PAGE,
    "csv": HTML_PAGE,
    "md": HTML_PAGE,
    "mp3": b"ID3\x03\x00\x00\x00\x00\x00\x00" + HTML_PAGE,
    "m4a": ISO_MEDIA,
    "mp4": ISO_MEDIA + HTML_PAGE,
    "m4v": ISO_MEDIA,
    "mov": ISO_MEDIA,
    "ogg": OGG,
    "oga": OGG,
    "opus": OGG,
    "wav": b"RIFF\x24\x00\x00\x00WAVEfmt " + ZEROS,
    "flac": b"fLaC" + ZEROS,
    "webm": EBML + HTML_PAGE,
    "mkv": EBML,
    "avi": b"RIFF\x24\x00\x00\x00AVI LIST" + ZEROS,
    "zip": _zip(("index.html", HTML_PAGE)),
    "7z": b"7z\xbc\xaf\x27\x1c" + ZEROS,
    "gz": gzip.compress(HTML_PAGE),
    "tgz": gzip.compress(_tar()),
    "tar": _tar(),
}


def test_unsafe_file_response_every_allowed_extension_has_a_sample():
    assert sorted(DEFAULT_ALLOWED_EXTENSIONS - SAMPLES.keys()) == []


@pytest.mark.parametrize(
    "extension", [pytest.param(e, id=f"unsafe-file-response-{e}") for e in sorted(SAMPLES)]
)
def test_every_file_response_is_inert(app, make_document, extension):
    document = make_document(f"sample.{extension}", SAMPLES[extension])
    expected = MEDIA_TYPES[extension]
    client = new_client(app, "participant")
    url = f"/documents/{document.id}/sample.{extension}"
    inline_allowed = extension in INLINE_EXTENSIONS
    for query, headers, inline in (
        ("", {}, False),
        ("?inline=1", {}, inline_allowed),
        ("?inline=true", {}, False),
        ("?inline=1&inline=0", {}, inline_allowed),
        ("", {"Range": "bytes=0-3"}, False),
        ("?inline=1", {"Range": "bytes=2-"}, inline_allowed),
    ):
        response = client.get(url + query, headers=headers)
        read(response)
        assert_inert_file_response(response, inline=inline, media_type=expected)
        head = client.head(url + query, headers=headers)
        read(head)
        assert_inert_file_response(head, inline=inline, media_type=expected)


def test_unsafe_file_response_session_zip_is_an_inert_attachment(app, make_meeting, make_document):
    meeting = make_meeting("Archive")
    make_document("notes.txt", HTML_PAGE, meeting=meeting)
    make_document("photo.png", PNG_POLYGLOT, meeting=meeting)
    client = new_client(app, "participant")
    for query in ("", "?inline=1"):
        response = client.get(f"/sessions/{meeting.slug}/archive.zip{query}")
        body = read(response)
        assert_inert_file_response(response, inline=False, media_type="application/zip")
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            names = archive.namelist()
        assert sorted(names) == ["notes.txt", "photo.png"]


def test_unsafe_file_response_not_modified_keeps_its_headers(app, world):
    client = new_client(app, "participant")
    url = f"/documents/{world.document_id}/support.pdf"
    first = client.get(url)
    read(first)
    again = client.get(url, headers={"If-None-Match": first.headers["ETag"]})
    read(again)
    assert again.status_code == 304
    assert again.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in directives(again.headers["Content-Security-Policy"])


# --- injection into queries -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "status"),
    [
        pytest.param("/?q=%27%20OR%201%3D1--", 200, id="sql-injection-search-or"),
        pytest.param(
            "/?q=%25%27%20UNION%20SELECT%20password_hash%20FROM%20facilitators--",
            200,
            id="sql-injection-union",
        ),
        pytest.param("/?tag=%27%20OR%20%271%27%3D%271", 200, id="sql-injection-tag"),
        pytest.param("/?q=%25", 200, id="sql-injection-like-wildcard"),
        pytest.param("/sessions/x%27%20OR%20%271%27%3D%271", 404, id="sql-injection-slug"),
        pytest.param("/?q=%5C%27%3B%20DROP%20TABLE%20documents%3B--", 200, id="sql-injection-drop"),
    ],
)
def test_sql_injection_in_filters_finds_nothing_and_breaks_nothing(app, world, url, status):
    client = new_client(app, "participant")
    before = db_state(app)
    response = client.get(url)
    page = response.get_data(as_text=True)
    assert response.status_code == status
    assert "$argon2" not in page
    # No filter above matches the one document: a query that was subverted would list it.
    assert f"/documents/{world.document_id}/" not in page
    assert db_state(app) == before


def test_sql_injection_in_the_login_email_is_just_a_wrong_login(app, world):
    client = new_client(app, "anonymous")
    token = csrf_token(client, "/login")
    response = client.post(
        "/login",
        data={"email": "' OR '1'='1' --", "password": "' OR '1'='1", "csrf_token": token},
    )
    assert response.status_code == 401
    assert reach(client) == (302, 302)
