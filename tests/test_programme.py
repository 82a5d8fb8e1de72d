"""The programme and the session page: order, tags, filters, search, escaping, query count."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import PDF_BYTES, PNG_BYTES
from sqlalchemy import event

import portal
from portal import content_version
from portal.extensions import db
from portal.models import Meeting
from portal.services.event import save_meeting

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
    """The HTML of the session <article> or the <section> whose heading holds ``heading_text``."""
    for tag, heading in (("article", "</h3>"), ("section", "</h2>")):
        for chunk in page.split(f"<{tag}")[1:]:
            body = chunk.split(f"</{tag}>")[0]
            if heading_text in body.split(heading)[0]:
                return body
    raise AssertionError(f"no section titled {heading_text!r}")


@contextmanager
def counting_queries(app):
    """Every statement sent: SQLAlchemy's, and the event-state read on the driver's cursor."""
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    read_state = content_version._read_state

    def record_state_read(connection, compiled):
        statements.append(compiled.sql)
        return read_state(connection, compiled)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    content_version._read_state = record_state_read
    try:
        yield statements
    finally:
        content_version._read_state = read_state
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


def queries_for(app, client, url: str, cold: bool = True) -> int:
    """Count the queries of one request; ``cold`` empties the page cache first."""
    if cold:
        app.extensions["portal.page_cache"].clear()
    with counting_queries(app) as statements:
        response = client.get(url)
    assert response.status_code == 200
    return len(statements)


@pytest.mark.parametrize("url", ["/", "/?tag=support", "/?q=document", "/?q=doc&tag=support"])
def test_programme_issues_a_constant_number_of_queries(
    app, reader, make_meeting, make_document, url
):
    meetings = [make_meeting("Temps A", day=21), make_meeting("Temps B", day=22)]
    add_documents(make_document, meetings, 1, start=1)
    with_one = queries_for(app, reader, url)
    assert with_one > 0  # the listener sees the request's queries
    add_documents(make_document, meetings, 49, start=2)
    page = page_of(reader, url)
    assert len(re.findall(r'class="doc-title"', page)) == 50
    with_fifty = queries_for(app, reader, url)
    assert with_fifty == with_one
    # From the page cache: only the event row the participant's loader reads anyway.
    assert queries_for(app, reader, url, cold=False) == 1


def test_session_page_issues_a_constant_number_of_queries(app, reader, make_meeting, make_document):
    meeting = make_meeting("Temps A")
    add_documents(make_document, [meeting], 1, start=1)
    with_one = queries_for(app, reader, f"/sessions/{meeting.slug}")
    assert with_one > 0
    add_documents(make_document, [meeting], 49, start=2)
    page = page_of(reader, f"/sessions/{meeting.slug}")
    in_session = sum(1 for number in range(1, 51) if number % 3)  # the others are general
    assert len(re.findall(r'class="doc-title"', page)) == in_session
    with_fifty = queries_for(app, reader, f"/sessions/{meeting.slug}")
    assert with_fifty == with_one
    assert queries_for(app, reader, f"/sessions/{meeting.slug}", cold=False) == 1


# --- days, the session under way, archives ---------------------------------------------------


def day_headings(page: str) -> list[str]:
    return re.findall(r'<section class="day" [^>]*>\s*<h2 id="d([0-9-]+)">([^<]+)</h2>', page)


def test_sessions_are_grouped_by_day_in_the_event_time_zone(reader, make_meeting):
    # 22:00 UTC is 23:00 in Paris (still the 21st); 23:00 UTC is already the 22nd in Paris.
    make_meeting("Veillée", day=21, hour=22)
    make_meeting("Minuit passé", day=21, hour=23)
    page = page_of(reader, "/")
    assert day_headings(page) == [
        ("2020-11-21", "Saturday 21 November"),
        ("2020-11-22", "Sunday 22 November"),
    ]
    saturday, sunday = page.split('<section class="day"')[1:3]
    assert "Veillée" in saturday and "23:00" in saturday and "Minuit passé" not in saturday
    assert "Minuit passé" in sunday and "00:00" in sunday


def meeting_at(app, title: str, starts: dt.datetime, hours: int = 2):
    with app.app_context():
        meeting = save_meeting(
            None, title=title, starts_at=starts, ends_at=starts + dt.timedelta(hours=hours)
        )
        return meeting.id


def article_of(page: str, meeting_id: int) -> str:
    start = page.index(f'id="m{meeting_id}"')
    return page[page.rindex("<article", 0, start) : page.index("</article>", start)]


def test_the_session_under_way_is_highlighted(app, reader):
    now = dt.datetime.now(dt.UTC)
    past = meeting_at(app, "Hier", now - dt.timedelta(days=1))
    current = meeting_at(app, "En ce moment", now - dt.timedelta(hours=1))
    later = meeting_at(app, "Demain", now + dt.timedelta(days=1))
    page = page_of(reader, "/")
    assert 'class="meeting now"' in article_of(page, current)
    assert "Under way" in article_of(page, current)
    assert "meeting now" not in article_of(page, past) + article_of(page, later)
    assert "meeting next" not in page
    banner = page[page.index('class="now-banner"') :].split("</p>")[0]
    assert "Under way:" in banner and f'href="#m{current}"' in banner


def test_the_next_session_is_highlighted_when_none_is_under_way(app, reader):
    now = dt.datetime.now(dt.UTC)
    meeting_at(app, "Hier", now - dt.timedelta(days=1))
    soon = meeting_at(app, "Bientôt", now + dt.timedelta(hours=3))
    later = meeting_at(app, "Plus tard", now + dt.timedelta(days=1))
    page = page_of(reader, "/")
    assert 'class="meeting next"' in article_of(page, soon)
    assert "meeting next" not in article_of(page, later)
    assert "meeting now" not in page
    assert "Next:" in page


def test_nothing_is_highlighted_once_the_week_is_over(reader, make_meeting):
    make_meeting("Temps passé", day=21)
    page = page_of(reader, "/")
    assert "now-banner" not in page
    assert "meeting now" not in page and "meeting next" not in page


def test_each_session_offers_its_zip_with_count_and_size(reader, make_meeting, make_document):
    meeting = make_meeting("Temps A")
    make_document("a.pdf", content=PDF_BYTES, meeting=meeting)
    make_document("b.txt", content=b"x" * 2048, meeting=meeting)
    make_meeting("Temps vide", day=22)
    page = page_of(reader, "/")
    block = section(page, "Temps A")
    assert f'href="/sessions/{meeting.slug}/archive.zip"' in block
    assert "2 documents" in block
    assert f"{(len(PDF_BYTES) + 2048) // 1024} KB" in block
    assert "archive.zip" not in section(page, "Temps vide")


def test_each_document_shows_its_type_icon_size_and_preview_link(reader, make_document):
    pdf = make_document("plan.pdf", title="Plan")
    txt = make_document("notes.txt", content=b"hello", title="Notes")
    page = page_of(reader, "/")
    pdf_item = page[page.index(f"/documents/{pdf.id}/") :].split("</li>\n")[0]
    assert 'class="icon kind-pdf"' in page and 'class="icon kind-text"' in page
    assert f'href="/preview/{pdf.id}"' in page
    assert f'href="/preview/{txt.id}"' not in page
    assert "PDF · " in pdf_item


# --- filters that keep each other ---------------------------------------------------------------


def test_tag_chips_add_their_tag_and_keep_the_search(reader, make_document):
    make_document("a.pdf", title="Alpha plan", tags=["Budget", "Plan"])
    page = page_of(reader, "/?q=plan&tag=budget")
    chips = re.findall(r'<a class="chip" href="([^"]+)">Plan</a>', page)
    assert chips, "the Plan chip links to the programme"
    query = parse_qs(urlsplit(chips[0].replace("&amp;", "&")).query)
    assert query == {"q": ["plan"], "tag": ["budget", "plan"]}
    # The active filters each remove only themselves.
    removals = re.findall(r'<a class="chip on" href="([^"]+)">', page)
    removed = [parse_qs(urlsplit(h.replace("&amp;", "&")).query) for h in removals]
    assert {"tag": ["budget"]} in removed  # the text removed, the tag kept
    assert {"q": ["plan"]} in removed  # the tag removed, the text kept


def test_a_tag_given_twice_counts_once(reader, make_document):
    make_document("a.pdf", title="Alpha", tags=["Budget"])
    page = page_of(reader, "/?tag=budget&tag=Budget")
    assert page.count('<a class="chip on"') == 1


# --- preview -------------------------------------------------------------------------------------


def test_pdf_preview_page_embeds_the_inline_file(reader, make_meeting, make_document):
    meeting = make_meeting("Temps A")
    document = make_document("plan.pdf", meeting=meeting, title="Le plan")
    response = reader.get(f"/preview/{document.id}")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    inline = f"/documents/{document.id}/plan.pdf?inline=1"
    assert f'<object data="{inline}" type="application/pdf"' in page
    assert f'href="/documents/{document.id}/plan.pdf"' in page  # the download button
    assert f'href="/sessions/{meeting.slug}"' in page  # the way back
    policy = response.headers["Content-Security-Policy"]
    assert "object-src 'self'" in policy and "script-src 'self';" in policy
    assert "unsafe" not in policy and "frame-ancestors 'none'" in policy
    served = reader.get(inline)
    assert served.headers["Content-Disposition"].startswith("inline")
    served.close()


def test_image_preview_page_shows_the_image(reader, make_document):
    document = make_document("photo.png", content=PNG_BYTES, title="Photo")
    page = page_of(reader, f"/preview/{document.id}")
    assert f'<img src="/documents/{document.id}/photo.png?inline=1" alt="Photo">' in page
    assert "<object" not in page


@pytest.mark.parametrize("name", ["notes.txt", "table.csv", "notes.md"])
def test_other_types_have_no_preview(reader, make_document, name):
    document = make_document(name, content=b"<svg onload=alert(1)><script>x</script>")
    response = reader.get(f"/preview/{document.id}")
    assert response.status_code == 404
    page = response.get_data(as_text=True)
    assert "cannot be shown in the browser" in page
    assert "?inline=1" not in page and "<object" not in page and "<img" not in page


def test_preview_of_a_missing_document_is_404(reader):
    assert reader.get("/preview/999999").status_code == 404


def test_preview_is_behind_the_gate(client, make_document):
    document = make_document("plan.pdf")
    response = client.get(f"/preview/{document.id}")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/access?next=")


# --- static files ----------------------------------------------------------------------------


def test_static_urls_carry_the_content_hash_and_are_cached_for_a_year(reader):
    page = page_of(reader, "/")
    css = re.search(r'href="(/static/portal\.css\?v=([0-9a-f]+))"', page)
    assert css, "the stylesheet URL carries a version"
    digest = hashlib.sha256((Path(PORTAL_DIR) / "static" / "portal.css").read_bytes())
    assert digest.hexdigest().startswith(css.group(2))
    with reader.get(css.group(1)) as versioned:
        assert versioned.status_code == 200
        assert versioned.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    for stale in ("/static/portal.css", "/static/portal.css?v=0123456789ab"):
        with reader.get(stale) as response:
            assert response.headers["Cache-Control"] == "no-cache"


def test_session_page_says_when_the_session_is_under_way(app, reader):
    now = dt.datetime.now(dt.UTC)
    current = meeting_at(app, "En ce moment", now - dt.timedelta(hours=1))
    later = meeting_at(app, "Demain", now + dt.timedelta(days=1))
    with app.app_context():
        slugs = {m.id: m.slug for m in db.session.scalars(db.select(Meeting))}
    assert '<span class="badge">Under way</span>' in page_of(reader, f"/sessions/{slugs[current]}")
    assert 'class="badge"' not in page_of(reader, f"/sessions/{slugs[later]}")


# --- links and sizes built without url_for per document --------------------------------------


def test_document_links_are_those_url_for_builds(app, reader, make_document):
    names = ["plan de séance #2 ?%.pdf", "a&b;c=d@e+f!.png", "100% utile (v2).pdf"]
    documents = [
        make_document(name, content=PNG_BYTES if name.endswith(".png") else PDF_BYTES)
        for name in names
    ]
    page = page_of(reader, "/")
    with app.test_request_context():
        from flask import url_for

        for document in documents:
            file_url = url_for(
                "programme.download", document_id=document.id, filename=document.original_name
            )
            preview_url = url_for("programme.preview", document_id=document.id)
            assert f'href="{file_url}"' in page.replace("&amp;", "&")
            assert f'href="{preview_url}"' in page
            response = reader.get(file_url)
            assert response.status_code == 200
            response.close()


@pytest.mark.parametrize(
    ("size", "label"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1 KB"),
        (2560, "2 KB"),  # Python's rounding, as Jinja's round filter did
        (1024 * 1024 - 1, "1024 KB"),
        (1024 * 1024, "1.0 MB"),
        (int(1.56 * 1024 * 1024), "1.6 MB"),
        (1024**3, "1.0 GB"),
        (5 * 1024**3 + 123456789, "5.11 GB"),
    ],
)
def test_sizes_are_written_with_their_unit(size, label):
    from portal.views.programme import filesize

    assert filesize(size, ["B", "KB", "MB", "GB"]) == label


def test_sizes_match_the_template_arithmetic_they_replace():
    from jinja2 import Environment

    from portal.views.programme import filesize

    units = ["B", "KB", "MB", "GB"]
    old = Environment(autoescape=True).from_string(
        "{%- if b < 1024 -%}{{ b }} {{ u[0] }}"
        "{%- elif b < 1024 * 1024 -%}{{ (b / 1024) | round(0) | int }} {{ u[1] }}"
        "{%- elif b < 1024 * 1024 * 1024 -%}{{ (b / 1048576) | round(1) }} {{ u[2] }}"
        "{%- else -%}{{ (b / 1073741824) | round(2) }} {{ u[3] }}{%- endif -%}"
    )
    for size in [*range(0, 5000, 7), *range(0, 8 * 1024**3, 1024**3 // 97 + 13)]:
        assert filesize(size, units) == old.render(b=size, u=units), size
