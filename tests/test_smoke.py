"""The portal starts, unlocks and lists: the shortest path a participant takes."""

from conftest import unlock


def test_programme_redirects_to_gate_then_opens(client, make_meeting, make_document):
    meeting = make_meeting("Fonctionnement des Assemblées locales")
    make_document("support.pdf", meeting=meeting, tags=["Support"])
    response = client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/access?next=")
    assert unlock(client).status_code == 303
    page = client.get("/").get_data(as_text=True)
    assert "Fonctionnement des Assemblées locales" in page
    assert "Support" in page
