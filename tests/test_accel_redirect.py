"""Behind nginx, ``PORTAL_ACCEL_REDIRECT`` lets nginx send the bytes of a download."""

import pytest
from conftest import flush_counts, unlock

from portal import create_app
from portal.config import SettingsError, load_settings
from portal.models import Document


@pytest.fixture
def accel_client(app, app_config):
    application = create_app({**app_config, "ACCEL_REDIRECT": "/protected/"})
    client = application.test_client()
    assert unlock(client).status_code == 303
    return application, client


def test_download_hands_the_file_to_nginx(accel_client, make_document):
    application, client = accel_client
    document = make_document("été 2020.pdf")
    response = client.get(f"/documents/{document.id}/x")
    assert response.status_code == 200
    assert response.headers["X-Accel-Redirect"] == f"/protected/{document.storage_key}"
    assert response.data == b""
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment")
    assert "filename*=UTF-8''%C3%A9t%C3%A9%202020.pdf" in disposition
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response.headers["Content-Security-Policy"]
    flush_counts(application)
    with application.app_context():
        from portal.extensions import db

        assert db.session.get(Document, document.id).download_count == 1


def test_without_the_setting_the_portal_sends_the_bytes(participant, make_document):
    document = make_document("support.pdf")
    response = participant.get(f"/documents/{document.id}/x")
    assert "X-Accel-Redirect" not in response.headers
    assert response.data.startswith(b"%PDF")
    response.close()


def test_setting_is_normalised_and_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("PORTAL_ACCEL_REDIRECT", "protected")
    assert load_settings({"INSTANCE_DIR": tmp_path})["ACCEL_REDIRECT"] == "/protected/"
    monkeypatch.setenv("PORTAL_ACCEL_REDIRECT", "/a/../b/")
    with pytest.raises(SettingsError):
        load_settings({"INSTANCE_DIR": tmp_path})
