"""The interface is French first, English second, and every message has its French translation.

The catalogue checks re-extract the messages from the current sources (with the same mapping,
``babel.cfg``, and keywords as ``pybabel extract``), so a developer who adds a string to the code
or a template without translating it gets a failing test, with the list of what is missing.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po
from conftest import csrf_token
from flask_babel import force_locale, ngettext

ROOT = Path(__file__).resolve().parent.parent
MAPPING = ROOT / "babel.cfg"
TRANSLATIONS = ROOT / "portal" / "translations"
FRENCH_PO = TRANSLATIONS / "fr" / "LC_MESSAGES" / "messages.po"
FRENCH_MO = TRANSLATIONS / "fr" / "LC_MESSAGES" / "messages.mo"
# The same keywords as `pybabel extract -k _l -k lazy_gettext` (the defaults include ngettext).
KEYWORDS = {**DEFAULT_KEYWORDS, "_l": None, "lazy_gettext": None}

FRENCH_SENTENCE = "Saisissez le mot de passe reçu avec l’invitation"
ENGLISH_SENTENCE = "Type the password you received with the invitation"
NO_BREAK_SPACES = "\u00a0\u202f"


def extract(root: Path = ROOT, mapping: Path = MAPPING) -> dict[str, tuple[str, int]]:
    """Extract the messages under ``root``: msgid (singular) -> first place it is used."""
    with mapping.open(encoding="utf-8") as cfg:
        method_map, options_map = parse_mapping_cfg(cfg, str(mapping))
    found: dict[str, tuple[str, int]] = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(
        str(root), method_map, options_map, keywords=KEYWORDS
    ):
        msgid = message[0] if isinstance(message, tuple | list) else message
        if msgid:
            found.setdefault(msgid, (filename, lineno))
    return found


def load_po(path: Path = FRENCH_PO) -> Catalog:
    with path.open("rb") as po:
        return read_po(po, locale="fr")


def load_mo(data: bytes) -> Catalog:
    return read_mo(io.BytesIO(data))


def message_key(msgid: str | tuple[str, ...]) -> str:
    return msgid[0] if isinstance(msgid, tuple) else msgid


def strings_of(msgstr: str | tuple[str, ...] | None) -> list[str]:
    if isinstance(msgstr, tuple | list):
        return list(msgstr)
    return [msgstr or ""]


def translated(catalog: Catalog) -> dict[str, list[str]]:
    """Non-fuzzy messages of a catalogue whose every form is a non-empty string."""
    return {
        message_key(m.id): strings_of(m.string)
        for m in catalog
        if m.id and not m.fuzzy and all(s.strip() for s in strings_of(m.string))
    }


def untranslated(sources: dict[str, tuple[str, int]], catalog: Catalog) -> list[str]:
    done = translated(catalog)
    return sorted(
        f"{file}:{line}: {msgid!r}" for msgid, (file, line) in sources.items() if msgid not in done
    )


def as_mapping(catalog: Catalog) -> dict[object, object]:
    """msgid -> msgstr of a catalogue's messages, the header left aside (plurals as tuples)."""
    return {
        tuple(m.id) if isinstance(m.id, list | tuple) else m.id: tuple(strings_of(m.string))
        for m in catalog
        if m.id
    }


def describe(ids: Iterable[object]) -> str:
    return "\n  ".join(sorted(repr(i) for i in ids))


# --- the catalogue -------------------------------------------------------------------------


def test_extraction_finds_the_messages_of_code_and_templates():
    """Guard against a silently empty extraction (wrong mapping, missing Jinja extractor)."""
    sources = extract()
    assert len(sources) >= 100, f"only {len(sources)} messages extracted"
    files = {file for file, _line in sources.values()}
    assert any(f.endswith(".py") for f in files), "nothing extracted from the Python code"
    assert any(f.endswith(".html") for f in files), "nothing extracted from the templates"
    # One of each kind: lazy_gettext in a form, gettext in a view, ngettext, a template.
    for expected in (
        "Password",
        "This password is not the right one.",
        "%(num)d document moved to the general documents.",
        "Enter the password",
    ):
        assert expected in sources, f"{expected!r} was not extracted"


def test_every_message_has_a_french_translation():
    missing = untranslated(extract(), load_po())
    assert not missing, (
        f"{len(missing)} message(s) without a French translation in {FRENCH_PO.relative_to(ROOT)}"
        " (run the update commands of portal/translations/README.md, then translate):\n  "
        + "\n  ".join(missing)
    )


def test_the_check_catches_an_untranslated_string(tmp_path):
    """The check above can fail: a new string, not yet translated, is reported with its place."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "portal").mkdir()
    (tmp_path / "templates" / "new.html").write_text(
        '<p>{{ _("Enter the password") }} {{ _("A brand new sentence") }}</p>\n', encoding="utf-8"
    )
    (tmp_path / "portal" / "new.py").write_text(
        'from flask_babel import lazy_gettext as _l\n\nLABEL = _l("Another new label")\n',
        encoding="utf-8",
    )
    missing = untranslated(extract(tmp_path), load_po())
    assert missing == [
        f"{Path('portal/new.py')}:3: 'Another new label'",
        f"{Path('templates/new.html')}:1: 'A brand new sentence'",
    ]


def test_the_french_catalogue_is_clean():
    catalog = load_po()
    assert catalog.locale is not None and str(catalog.locale) == "fr"
    fuzzy = [m.id for m in catalog if m.id and m.fuzzy]
    assert not fuzzy, f"fuzzy translations to review:\n  {describe(fuzzy)}"
    empty = [m.id for m in catalog if m.id and message_key(m.id) not in translated(catalog)]
    assert not empty, f"empty translations:\n  {describe(empty)}"
    # Placeholders (%(title)s, %(num)d...) and the number of plural forms must agree.
    problems = [
        f"{message.id!r}: {'; '.join(str(e) for e in errors)}"
        for message, errors in catalog.check()
    ]
    assert not problems, "inconsistent translations:\n  " + "\n  ".join(problems)


def test_french_typography_is_consistent():
    """« », ’ and a no-break space before : ; ? ! and », after «."""
    wrong = []
    for message in load_po():
        if not message.id:
            continue
        for text in strings_of(message.string):
            if re.search(f"(?<![{NO_BREAK_SPACES}])[:;?!»]|«(?![{NO_BREAK_SPACES}])", text):
                wrong.append(f"{text!r}: use a no-break space before : ; ? ! » and after «")
            if "'" in text or '"' in text:
                wrong.append(f"{text!r}: use ’ and « » rather than straight quotes")
    assert not wrong, "\n  ".join(["French typography:", *wrong])


def test_the_compiled_catalogue_matches_the_po_file():
    assert FRENCH_MO.is_file(), f"{FRENCH_MO.relative_to(ROOT)} is missing: compile the catalogue"
    expected_buffer = io.BytesIO()
    write_mo(expected_buffer, load_po())
    expected = load_mo(expected_buffer.getvalue())
    committed = load_mo(FRENCH_MO.read_bytes())
    expected_map, committed_map = as_mapping(expected), as_mapping(committed)
    stale = [
        i
        for i in expected_map.keys() | committed_map.keys()
        if expected_map.get(i) != committed_map.get(i)
    ]
    assert not stale, (
        f"{FRENCH_MO.relative_to(ROOT)} does not match the .po file; run "
        f"`pybabel compile -d portal/translations -D messages`. Differences:\n  {describe(stale)}"
    )
    assert committed.plural_forms == expected.plural_forms


def test_plural_forms_work_at_run_time(app):
    singular = "%(num)d document moved to the general documents."
    plural = "%(num)d documents moved to the general documents."
    with app.test_request_context():
        with force_locale("fr"):
            assert ngettext(singular, plural, 1) == (
                "1 document a été déplacé vers les documents généraux."
            )
            assert ngettext(singular, plural, 3) == (
                "3 documents ont été déplacés vers les documents généraux."
            )
        with force_locale("en"):
            assert ngettext(singular, plural, 3) == ("3 documents moved to the general documents.")


# --- the language of the pages -------------------------------------------------------------


def page_language(response) -> str:
    match = re.search(r'<html lang="([^"]+)"', response.get_data(as_text=True))
    assert match, "no <html lang> on the page"
    return match.group(1)


def assert_french(response) -> None:
    assert page_language(response) == "fr"
    page = response.get_data(as_text=True)
    assert FRENCH_SENTENCE in page
    assert "Mot de passe" in page  # a lazily translated form label
    assert ENGLISH_SENTENCE not in page


def assert_english(response) -> None:
    assert page_language(response) == "en"
    page = response.get_data(as_text=True)
    assert ENGLISH_SENTENCE in page
    assert "Password" in page
    assert FRENCH_SENTENCE not in page


def test_pages_are_french_by_default(client):
    response = client.get("/access")
    assert response.status_code == 200
    assert_french(response)
    assert client.get_cookie("lang") is None


def test_lang_parameter_switches_to_english_and_is_remembered(client):
    response = client.get("/access?lang=en")
    assert response.status_code == 200
    assert_english(response)
    cookie = client.get_cookie("lang")
    assert cookie is not None and cookie.value == "en"
    assert cookie.http_only
    # The next page, without the parameter, stays in English.
    assert_english(client.get("/access"))
    # And back to French, remembered as well.
    assert_french(client.get("/access?lang=fr"))
    assert client.get_cookie("lang").value == "fr"
    assert_french(client.get("/access"))


def test_accept_language_chooses_english(client):
    assert_english(client.get("/access", headers={"Accept-Language": "en"}))
    assert_english(client.get("/access", headers={"Accept-Language": "de, en-GB;q=0.8"}))
    assert_french(client.get("/access", headers={"Accept-Language": "fr-FR,fr;q=0.9,en;q=0.8"}))
    # A language the portal does not speak falls back to French.
    assert_french(client.get("/access", headers={"Accept-Language": "de"}))
    # Choosing the language does not depend on a cookie the browser did not get.
    assert client.get_cookie("lang") is None


def test_explicit_choice_beats_the_browser(client):
    client.get("/access?lang=fr")
    assert_french(client.get("/access", headers={"Accept-Language": "en"}))
    assert_english(client.get("/access?lang=en", headers={"Accept-Language": "fr"}))


def test_unknown_language_is_ignored(client):
    response = client.get("/access?lang=xx")
    assert_french(response)
    assert client.get_cookie("lang") is None


def test_programme_and_error_pages_follow_the_language(participant, make_document):
    make_document("programme.pdf", title="Programme de la semaine")
    french = participant.get("/").get_data(as_text=True)
    assert "Documents généraux" in french
    english = participant.get("/?lang=en").get_data(as_text=True)
    assert "General documents" in english
    assert "Documents généraux" not in english

    missing = participant.get("/no-such-page")
    assert missing.status_code == 404
    assert page_language(missing) == "en"
    assert "Page not found" in missing.get_data(as_text=True)
    missing = participant.get("/no-such-page?lang=fr")
    assert missing.status_code == 404
    assert page_language(missing) == "fr"
    assert "Page introuvable" in missing.get_data(as_text=True)


def test_form_errors_are_in_the_visitors_language(client):
    token = csrf_token(client)
    french = client.post("/access", data={"password": "wrong", "csrf_token": token})
    assert french.status_code == 401
    assert "Ce n’est pas le bon mot de passe." in french.get_data(as_text=True)
    empty = client.post("/access", data={"password": "", "csrf_token": token})
    assert empty.status_code == 400
    assert "Ce champ est requis." in empty.get_data(as_text=True)  # WTForms' own catalogue

    token = csrf_token(client, "/access?lang=en")
    english = client.post("/access", data={"password": "wrong", "csrf_token": token})
    assert english.status_code == 401
    assert "This password is not the right one." in english.get_data(as_text=True)


@pytest.mark.parametrize(
    ("lang", "expected"), [("fr", "Requête incorrecte"), ("en", "Bad request")]
)
def test_csrf_error_page_is_translated(client, lang, expected):
    client.get(f"/access?lang={lang}")
    response = client.post("/access", data={"password": "whatever"})
    assert response.status_code == 400
    assert page_language(response) == lang
    assert expected in response.get_data(as_text=True)
