"""Headers every page carries, the portal's own error pages, and the health check."""

from __future__ import annotations

import shutil
from io import BytesIO
from pathlib import Path

import pytest
from conftest import CSRF_PATTERN, PDF_BYTES, login, unlock

import portal

PORTAL_DIR = str(Path(portal.__file__).parent)


def directives(policy: str) -> dict[str, list[str]]:
    found = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            found[words[0].lower()] = words[1:]
    return found


def assert_page_protections(response) -> None:
    headers = response.headers
    assert response.mimetype == "text/html"
    policy = directives(headers["Content-Security-Policy"])
    scripts = policy.get("script-src", policy.get("default-src"))
    assert scripts is not None, "no script-src nor default-src"
    assert "'unsafe-inline'" not in scripts
    assert "'unsafe-eval'" not in scripts
    framing_denied = policy.get("frame-ancestors") == ["'none'"] or headers.get(
        "X-Frame-Options", ""
    ).upper() in {"DENY", "SAMEORIGIN"}
    assert framing_denied
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"]


def assert_portal_error_page(response, status: int) -> str:
    assert response.status_code == status
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "<html" in page
    assert "Traceback" not in page
    assert 'File "' not in page
    assert PORTAL_DIR not in page
    return page


@pytest.fixture
def english(client):
    client.set_cookie("lang", "en")
    return client


# --- every page -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"), [("/access", 200), ("/login", 200), ("/no-such-page", 404)]
)
def test_anonymous_pages_carry_the_security_headers(client, path, status):
    response = client.get(path)
    assert response.status_code == status
    assert_page_protections(response)


def test_programme_and_session_pages_carry_the_security_headers(
    participant, make_meeting, make_document
):
    meeting = make_meeting("Temps")
    make_document("support.pdf", PDF_BYTES, meeting=meeting)
    for path in ("/", f"/sessions/{meeting.slug}", "/?q=support&tag=x"):
        response = participant.get(path)
        assert response.status_code == 200, path
        assert_page_protections(response)


def test_wrong_password_and_bad_csrf_pages_carry_the_security_headers(client):
    assert_page_protections(unlock(client, "wrong-password"))
    response = client.post("/access", data={"password": "x"})
    assert response.status_code == 400
    assert_page_protections(response)


def test_facilitator_pages_carry_the_security_headers(facilitator):
    response = facilitator.get("/manage/", follow_redirects=True)
    assert response.status_code == 200
    assert_page_protections(response)


def test_redirects_carry_the_security_headers(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Security-Policy" in response.headers


def test_pages_are_not_cached_by_shared_caches(participant):
    cache_control = participant.get("/").headers["Cache-Control"]
    assert "no-store" in cache_control or "private" in cache_control


def test_https_pages_ask_for_strict_transport_security(client):
    response = client.get("/access", base_url="https://localhost")
    assert "max-age=" in response.headers["Strict-Transport-Security"]


# --- error pages ----------------------------------------------------------------------------


def test_404_is_the_portals_own_html_page(english):
    response = english.get("/no-such-page")
    page = assert_portal_error_page(response, 404)
    assert "Page not found" in page
    assert_page_protections(response)


def test_404_for_an_unknown_session_as_participant(participant):
    participant.set_cookie("lang", "en")
    page = assert_portal_error_page(participant.get("/sessions/no-such-session"), 404)
    assert "Page not found" in page


def test_405_has_an_allow_header_and_the_portals_page(english):
    response = english.delete("/access")
    page = assert_portal_error_page(response, 405)
    assert "Method not allowed" in page
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert {"GET", "POST"} <= allowed
    assert "DELETE" not in allowed
    assert_page_protections(response)


@pytest.mark.parametrize(
    ("method", "path"), [("put", "/access"), ("post", "/healthz"), ("patch", "/login")]
)
def test_other_wrong_methods_get_405(client, method, path):
    response = getattr(client, method)(path)
    assert_portal_error_page(response, 405)
    assert response.headers["Allow"]


def test_400_page_for_a_missing_csrf_token_is_the_portals_own(english):
    english.get("/access")
    response = english.post("/access", data={"password": "anything"})
    page = assert_portal_error_page(response, 400)
    assert "Reload the page" in page


def test_error_pages_follow_the_language(client):
    french = client.get("/no-such-page", headers={"Accept-Language": "fr"})
    english = client.get("/no-such-page", headers={"Accept-Language": "en"})
    assert 'lang="fr"' in french.get_data(as_text=True)
    assert 'lang="en"' in english.get_data(as_text=True)


# --- health check ---------------------------------------------------------------------------


def test_healthz_answers_ok_in_json(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == {"status": "ok"}


def test_healthz_needs_no_password(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 302


def test_healthz_answers_503_when_the_storage_folder_is_gone(client, storage_dir):
    shutil.rmtree(storage_dir)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["status"] == "error"
    assert set(body) > {"status"}  # says what is wrong
    assert PORTAL_DIR not in response.get_data(as_text=True)
    assert not storage_dir.exists()


def test_running_portal_never_recreates_a_missing_storage_folder(
    app, client, storage_dir, make_meeting, make_document
):
    meeting = make_meeting("Temps")
    document = make_document("support.pdf", PDF_BYTES, meeting=meeting)
    shutil.rmtree(storage_dir)

    assert client.get("/healthz").status_code == 503
    assert unlock(client).status_code == 303
    assert client.get("/").status_code == 200
    download = client.get(f"/documents/{document.id}/support.pdf")
    assert download.status_code == 503
    download.close()
    archive = client.get(f"/sessions/{meeting.slug}/archive.zip")
    assert archive.status_code == 503
    archive.close()

    uploader = app.test_client()
    assert login(uploader).status_code == 303
    token = CSRF_PATTERN.search(uploader.get("/manage/upload").get_data(as_text=True)).group(1)
    upload = uploader.post(
        "/manage/upload",
        data={"csrf_token": token, "files": [(BytesIO(PDF_BYTES), "new.pdf")], "session": ""},
        content_type="multipart/form-data",
    )
    assert upload.status_code == 503
    assert client.get("/healthz").status_code == 503
    assert not storage_dir.exists()
