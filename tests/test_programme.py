"""The programme and the session page: order, tags, filters, search, escaping, query count."""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import PDF_BYTES
from sqlalchemy import event

import portal
from portal.extensions import db

PORTAL_DIR = str(Path(portal.__file__).parent)


@pytest.fixture
def reader(participant):
    """An unlocked participant who reads the portal in English."""
    participant.set_cookie("lang", "en")
    return participant


def page_of(client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, url
    assert response.mimetype == "text/html"
    return response.get_data(as_text=True)


def section(page: str, heading_text: str) -> str:
    """The HTML of the <section> whose heading holds ``heading_text``."""
    for chunk in page.split("<section")[1:]:
        body = chunk.split("</section>")[0]
        if heading_text in body.split("</h2>")[0]:
            return body
    raise AssertionError(f"no section titled {heading_text!r}")


@contextmanager
def counting_queries(app):
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


# --- access ---------------------------------------------------------------------------------


def test_anonymous_visitor_is_sent_to_the_gate_with_next(client):
    response = client.get("/?tag=support")
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == "/access"
    assert parse_qs(location.query)["next"] == ["/?tag=support"]


def test_anonymous_visitor_cannot_see_a_session_page(client, make_meeting):
    meeting = make_meeting("Assemblées locales")
    response = client.get(f"/sessions/{meeting.slug}")
    assert response.status_code == 302
    assert urlsplit(response.headers["Location"]).path == "/access"


# --- the programme --------------------------------------------------------------------------


def test_sessions_are_listed_in_time_order(reader, make_meeting):
    make_meeting("Troisième temps", day=23)
    make_meeting("Premier temps", day=21, hour=9)
    make_meeting("Deuxième temps du même jour", day=21, hour=14)
    make_meeting("Quatrième temps", day=24)
    page = page_of(reader, "/")
    order = [
        page.index(title)
        for title in (
            "Premier temps",
            "Deuxième temps du même jour",
            "Troisième temps",
            "Quatrième temps",
        )
    ]
    assert order == sorted(order)


def test_session_documents_are_listed_with_their_tags(reader, make_meeting, make_document):
    meeting = make_meeting("Élections municipales")
    document = make_document(
        "programme.pdf", meeting=meeting, title="Ordre du jour", tags=["Support", "Compte-rendu"]
    )
    page = page_of(reader, "/")
    block = section(page, "Élections municipales")
    assert "Ordre du jour" in block
    assert f"/documents/{document.id}/programme.pdf" in block
    assert "Support" in block and "Compte-rendu" in block
    assert 'href="/?tag=support"' in block
    assert 'href="/?tag=compte-rendu"' in block


def test_general_documents_have_their_own_section(reader, make_meeting, make_document):
    meeting = make_meeting("Temps un")
    make_document("charte.pdf", title="Charte du réseau")
    make_document("annexe.pdf", meeting=meeting, title="Annexe de session")
    page = page_of(reader, "/")
    general = section(page, "General documents")
    assert "Charte du réseau" in general
    assert "Annexe de session" not in general
    assert "Charte du réseau" not in section(page, "Temps un")


def test_session_without_documents_still_appears(reader, make_meeting):
    make_meeting("Temps sans document")
    page = page_of(reader, "/")
    assert "Temps sans document" in page
    assert "No document yet." in section(page, "Temps sans document")


# --- tag filter -----------------------------------------------------------------------------


@pytest.fixture
def tagged(make_meeting, make_document):
    meeting = make_meeting("Temps tags")
    make_document("a.pdf", meeting=meeting, title="DocBoth", tags=["Support", "Synthèse"])
    make_document("b.pdf", meeting=meeting, title="DocSupportOnly", tags=["Support"])
    make_document("c.pdf", title="DocSyntheseOnly", tags=["Synthèse"])
    make_document("d.pdf", meeting=meeting, title="DocNoTag")


def test_one_tag_keeps_the_documents_carrying_it(reader, tagged):
    page = page_of(reader, "/?tag=support")
    assert "DocBoth" in page and "DocSupportOnly" in page
    assert "DocSyntheseOnly" not in page and "DocNoTag" not in page


def test_several_tags_keep_only_documents_carrying_every_tag(reader, tagged):
    page = page_of(reader, "/?tag=support&tag=synthese")
    assert "DocBoth" in page
    assert "DocSupportOnly" not in page
    assert "DocSyntheseOnly" not in page
    assert "DocNoTag" not in page


def test_unknown_tag_matches_nothing(reader, tagged):
    page = page_of(reader, "/?tag=nothing-like-this")
    for title in ("DocBoth", "DocSupportOnly", "DocSyntheseOnly", "DocNoTag"):
        assert title not in page
    assert "No document matches these filters." in page


# --- text search ----------------------------------------------------------------------------


@pytest.fixture
def searchable(make_meeting, make_document):
    meeting = make_meeting("Temps recherche")
    make_document("t.pdf", meeting=meeting, title="Budget prévisionnel")
    make_document("d.pdf", meeting=meeting, title="ByDescription", description="Le BUDGET voté")
    make_document("budget-2020.pdf", meeting=meeting, title="ByFileName")
    make_document("g.pdf", title="ByTagName", tags=["Budget"])
    make_document("u.pdf", meeting=meeting, title="Unrelated", description="Rien à voir")


@pytest.mark.parametrize("query", ["budget", "BUDGET", "  budget  "])
def test_search_looks_in_title_description_file_name_and_tag(reader, searchable, query):
    page = page_of(reader, f"/?q={query}")
    for title in ("Budget prévisionnel", "ByDescription", "ByFileName", "ByTagName"):
        assert title in page, title
    assert "Unrelated" not in page


def test_search_with_no_match_says_so(reader, searchable):
    page = page_of(reader, "/?q=introuvable")
    assert "No document matches these filters." in page
    assert "Budget prévisionnel" not in page


def test_search_ignores_case_of_accented_letters(reader, make_document):
    make_document("e.pdf", title="Élections municipales")
    make_document("o.pdf", title="Other")
    page = page_of(reader, "/?q=élections")
    assert "Élections municipales" in page
    assert "Other" not in page


def test_search_combines_with_tag_filter(reader, make_document):
    make_document("a.pdf", title="Budget support", tags=["Support"])
    make_document("b.pdf", title="Budget sans étiquette")
    page = page_of(reader, "/?q=budget&tag=support")
    assert "Budget support" in page
    assert "Budget sans étiquette" not in page


@pytest.fixture
def wildcards(make_document):
    make_document("p.pdf", title="Taux 100% atteint")
    make_document("n.pdf", title="Note interne_v2")
    make_document("r.pdf", title="Rapport final")


def test_percent_in_search_is_a_literal_character(reader, wildcards):
    page = page_of(reader, "/?q=%25")
    assert "Taux 100% atteint" in page
    assert "Note interne_v2" not in page
    assert "Rapport final" not in page


def test_underscore_in_search_is_a_literal_character(reader, wildcards):
    page = page_of(reader, "/?q=_")
    assert "Note interne_v2" in page
    assert "Taux 100% atteint" not in page
    assert "Rapport final" not in page


def test_wildcard_pattern_does_not_match_unrelated_text(reader, wildcards):
    page = page_of(reader, "/?q=R%25t")  # "R%t" would match "Rapport" if % were a wildcard
    assert "Rapport final" not in page


# --- escaping -------------------------------------------------------------------------------


XSS = '<script>alert("x")</script>'


def test_user_text_is_escaped_on_the_programme(reader, make_meeting, make_document):
    meeting = make_meeting(f"Session {XSS}", facilitators=f"Anim {XSS}")
    make_document(
        "x.pdf",
        meeting=meeting,
        title=f"Titre {XSS}",
        description=f'Desc <img src=x onerror="alert(1)"> {XSS}',
        tags=["<script>tag</script>"],
    )
    make_document("g.pdf", title=f"General {XSS}")
    page = page_of(reader, "/")
    assert "<script>" not in page.lower()
    assert "<img src=x" not in page
    assert "&lt;script&gt;" in page
    assert "Titre &lt;script&gt;" in page
    assert "Session &lt;script&gt;" in page
    assert "&lt;script&gt;tag&lt;/script&gt;" in page


def test_search_text_is_escaped_when_shown_back(reader):
    response = reader.get('/?q="><script>alert(1)</script>')
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<script>" not in page.lower()
    assert "&lt;script&gt;" in page


def test_user_text_is_escaped_on_the_session_page(reader, make_meeting, make_document):
    meeting = make_meeting(
        f"Session {XSS}", facilitators=f"Anim {XSS}", description=f"Description {XSS}"
    )
    make_document("x.pdf", meeting=meeting, title=f"Titre {XSS}", tags=[f"T {XSS}"])
    page = page_of(reader, f"/sessions/{meeting.slug}")
    assert "<script>" not in page.lower()
    assert page.count("&lt;script&gt;") >= 4


# --- one session ----------------------------------------------------------------------------


def test_session_page_shows_one_session_and_its_documents(reader, make_meeting, make_document):
    meeting = make_meeting(
        "Fonctionnement des Assemblées locales",
        description="Échanges sur le fonctionnement",
        facilitators="Claire et Malik",
    )
    other = make_meeting("Autre temps", day=22)
    mine = make_document("mine.pdf", meeting=meeting, title="Support du temps", tags=["Support"])
    make_document("theirs.pdf", meeting=other, title="Support de l'autre temps")
    make_document("general.pdf", title="Document général")

    page = page_of(reader, f"/sessions/{meeting.slug}")
    assert "Fonctionnement des Assemblées locales" in page
    assert "Échanges sur le fonctionnement" in page
    assert "Claire et Malik" in page
    assert "Support du temps" in page
    assert f"/documents/{mine.id}/mine.pdf" in page
    assert "Support" in page
    assert "Support de l&#39;autre temps" not in page and "Support de l'autre temps" not in page
    assert "Document général" not in page
    assert f"/sessions/{meeting.slug}/archive.zip" in page


def test_unknown_session_slug_gets_the_404_page(reader):
    response = reader.get("/sessions/no-such-session")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "Page not found" in page
    assert "Traceback" not in page
    assert PORTAL_DIR not in page


# --- query count ----------------------------------------------------------------------------


def add_documents(make_document, meetings, count: int, start: int = 0) -> None:
    for number in range(start, start + count):
        make_document(
            f"doc-{number}.pdf",
            content=PDF_BYTES,
            meeting=meetings[number % len(meetings)] if number % 3 else None,
            title=f"Document {number}",
            tags=[f"Tag {number % 4}", "Support"],
        )


def queries_for(app, client, url: str) -> int:
    with counting_queries(app) as statements:
        response = client.get(url)
    assert response.status_code == 200
    return len(statements)


@pytest.mark.parametrize("url", ["/", "/?tag=support", "/?q=document"])
def test_programme_issues_a_constant_number_of_queries(
    app, reader, make_meeting, make_document, url
):
    meetings = [make_meeting("Temps A", day=21), make_meeting("Temps B", day=22)]
    add_documents(make_document, meetings, 2)
    with_two = queries_for(app, reader, url)
    assert with_two > 0  # the listener sees the request's queries
    add_documents(make_document, meetings, 28, start=2)
    page = page_of(reader, url)
    assert len(re.findall(r'class="doc-title"', page)) == 30
    with_thirty = queries_for(app, reader, url)
    assert with_thirty == with_two


def test_session_page_issues_a_constant_number_of_queries(app, reader, make_meeting, make_document):
    meeting = make_meeting("Temps A")
    add_documents(make_document, [meeting], 2)
    with_two = queries_for(app, reader, f"/sessions/{meeting.slug}")
    assert with_two > 0
    add_documents(make_document, [meeting], 28, start=2)
    with_thirty = queries_for(app, reader, f"/sessions/{meeting.slug}")
    assert with_thirty == with_two
