"""File names, extensions, signatures and the allow-list (SPEC sections 5 and 6)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from portal.config import (
    DEFAULT_ALLOWED_EXTENSIONS,
    FORBIDDEN_EXTENSIONS,
    _extensions,
    load_settings,
)
from portal.filetypes import (
    INLINE_TYPES,
    MAX_NAME_BYTES,
    clean_filename,
    content_matches,
    extension_of,
    media_type,
)

HTML = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"

# --- clean_filename --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("support.pdf", "support.pdf"),
        ("dossier/sous-dossier/support.pdf", "support.pdf"),
        ("C:\\Users\\anim\\Bureau\\support.pdf", "support.pdf"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("/absolute/path/compte-rendu.txt", "compte-rendu.txt"),
        ("mixed/path\\name.odt", "name.odt"),
    ],
)
def test_clean_filename_keeps_only_the_last_path_component(raw, expected):
    assert clean_filename(raw) == expected


def test_clean_filename_drops_control_characters():
    assert clean_filename("sup\x00po\x07rt\x1b.pdf") == "support.pdf"
    assert clean_filename("line\nbreak\r.txt") == "linebreak.txt"
    assert clean_filename("del\x7fete\x85.pdf") == "delete.pdf"


@pytest.mark.parametrize(
    "mark", ["\u202e", "\u202d", "\u202a", "\u202b", "\u202c", "\u2066", "\u2067", "\u2068"]
)
def test_clean_filename_drops_bidirectional_overrides(mark):
    # "facture<RLO>fdp.exe" would display as "factureexe.pdf".
    cleaned = clean_filename(f"facture{mark}fdp.exe")
    assert cleaned == "facturefdp.exe"
    assert mark not in cleaned


def test_clean_filename_drops_invisible_marks_and_bom():
    assert clean_filename("\ufeffnotes\u200e\u200f.txt") == "notes.txt"


def test_clean_filename_keeps_accents_and_normalises_to_nfc():
    decomposed = "Compte-rendu e\u0301tats ge\u0301ne\u0301raux.pdf"
    assert clean_filename(decomposed) == "Compte-rendu états généraux.pdf"


def test_clean_filename_cuts_to_255_bytes_keeping_the_extension():
    cleaned = clean_filename("a" * 400 + ".pdf")
    assert len(cleaned.encode()) <= MAX_NAME_BYTES
    assert cleaned.endswith(".pdf")
    assert cleaned.startswith("aaaa")


def test_clean_filename_cut_never_splits_a_multibyte_character():
    for filler in ("é", "€", "😀", "的"):
        cleaned = clean_filename(filler * 300 + ".docx")
        encoded = cleaned.encode("utf-8")
        assert len(encoded) <= MAX_NAME_BYTES
        assert cleaned.endswith(".docx")
        assert set(cleaned[: -len(".docx")]) == {filler}
        assert "\ufffd" not in cleaned


def test_clean_filename_short_names_are_untouched():
    name = "é" * 100 + ".pdf"  # 204 bytes
    assert clean_filename(name) == name


@pytest.mark.parametrize("raw", ["", "   ", "/", "\\", "..", ".", "dir/", "\u202e", "\x00\x01"])
def test_clean_filename_empty_result_uses_the_fallback(raw):
    assert clean_filename(raw) == "document"
    assert clean_filename(raw, fallback="fichier") == "fichier"


def test_clean_filename_none_uses_the_fallback():
    assert clean_filename(None) == "document"  # type: ignore[arg-type]


# --- extension_of and media types -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("support.pdf", "pdf"),
        ("SUPPORT.PDF", "pdf"),
        ("Photo.JpEg", "jpeg"),
        ("archive.tar.gz", "gz"),
        ("two.dots.docx", "docx"),
        ("no-extension", ""),
        (".bashrc", ""),
        ("trailing.", ""),
        ("", ""),
    ],
)
def test_extension_of(name, expected):
    assert extension_of(name) == expected


def test_media_type_of_unknown_extension_is_octet_stream():
    assert media_type("pdf") == "application/pdf"
    assert media_type("txt") == "text/plain"
    assert media_type("html") == "application/octet-stream"
    assert media_type("") == "application/octet-stream"


def test_inline_types_are_only_pdf_and_raster_images():
    assert INLINE_TYPES == {"application/pdf", "image/png", "image/jpeg", "image/gif", "image/webp"}


def test_every_allowed_extension_has_a_known_media_type():
    unknown = sorted(
        e for e in DEFAULT_ALLOWED_EXTENSIONS if media_type(e).endswith("octet-stream")
    )
    assert unknown == []


# --- content_matches ---------------------------------------------------------------------------


def _zip_bytes(entries: dict[str, bytes], first: tuple[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        if first:
            archive.writestr(first[0], first[1], compress_type=zipfile.ZIP_STORED)
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _opendocument(mimetype: str) -> bytes:
    return _zip_bytes({"content.xml": b"<office/>"}, first=("mimetype", mimetype.encode()))


def _tar_bytes() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("notes.txt")
        info.size = 5
        archive.addfile(info, io.BytesIO(b"notes"))
    return buffer.getvalue()


OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64
ISO_MEDIA = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
EBML = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01"

GENUINE = {
    "pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 32,
    "jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 32,
    "jpeg": b"\xff\xd8\xff\xe1\x00\x10Exif\x00" + b"\x00" * 32,
    "gif": b"GIF89a\x01\x00\x01\x00" + b"\x00" * 16,
    "webp": b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 16,
    "doc": OLE2,
    "xls": OLE2,
    "ppt": OLE2,
    "docx": _zip_bytes({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w/>"}),
    "xlsx": _zip_bytes({"[Content_Types].xml": b"<Types/>", "xl/workbook.xml": b"<x/>"}),
    "pptx": _zip_bytes({"[Content_Types].xml": b"<Types/>", "ppt/presentation.xml": b"<p/>"}),
    "odt": _opendocument("application/vnd.oasis.opendocument.text"),
    "ods": _opendocument("application/vnd.oasis.opendocument.spreadsheet"),
    "odp": _opendocument("application/vnd.oasis.opendocument.presentation"),
    "odg": _opendocument("application/vnd.oasis.opendocument.graphics"),
    "epub": _opendocument("application/epub+zip"),
    "rtf": b"{\\rtf1\\ansi\\deff0 {\\fonttbl {\\f0 Times;}} Bonjour}",
    "mp3": b"ID3\x03\x00\x00\x00\x00\x00\x21" + b"\x00" * 32,
    "m4a": b"\x00\x00\x00\x1cftypM4A \x00\x00\x00\x00M4A mp42isom",
    "mp4": ISO_MEDIA,
    "m4v": ISO_MEDIA,
    "mov": b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  ",
    "ogg": b"OggS\x00\x02" + b"\x00" * 32,
    "oga": b"OggS\x00\x02" + b"\x00" * 32,
    "opus": b"OggS\x00\x02" + b"\x00" * 20 + b"OpusHead",
    "wav": b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 16,
    "avi": b"RIFF\x24\x00\x00\x00AVI LIST" + b"\x00" * 16,
    "flac": b"fLaC\x00\x00\x00\x22" + b"\x00" * 32,
    "webm": EBML,
    "mkv": EBML,
    "zip": _zip_bytes({"a.txt": b"hello"}),
    "7z": b"7z\xbc\xaf\x27\x1c\x00\x04" + b"\x00" * 24,
    "gz": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\x00" * 8,
    "tgz": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\x00" * 8,
    "tar": _tar_bytes(),
    "txt": "Compte-rendu de la réunion\nPoints saillants\n".encode(),
    "csv": "structure;participant·es\nExemple;3\n".encode(),
    "md": b"# Titre\n\n- point\n",
}


def _matches(tmp_path: Path, extension: str, data: bytes) -> bool:
    path = tmp_path / f"upload.{extension}"
    path.write_bytes(data)
    return content_matches(extension, data[:8192], path)


def test_every_default_extension_has_a_genuine_sample_here():
    assert set(GENUINE) == set(DEFAULT_ALLOWED_EXTENSIONS)


@pytest.mark.parametrize("extension", sorted(GENUINE))
def test_genuine_content_is_accepted(tmp_path, extension):
    assert _matches(tmp_path, extension, GENUINE[extension])


SIGNED = sorted(set(GENUINE) - {"txt", "csv", "md"})


@pytest.mark.parametrize("extension", SIGNED)
def test_html_claiming_a_signed_format_is_refused(tmp_path, extension):
    assert not _matches(tmp_path, extension, HTML)


@pytest.mark.parametrize("extension", SIGNED)
def test_windows_executable_claiming_a_signed_format_is_refused(tmp_path, extension):
    assert not _matches(tmp_path, extension, b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 64)


@pytest.mark.parametrize(
    ("extension", "lie"),
    [
        ("png", "jpg"),
        ("jpg", "png"),
        ("gif", "png"),
        ("webp", "wav"),
        ("wav", "avi"),
        ("pdf", "png"),
        ("docx", "xlsx"),
        ("xlsx", "pptx"),
        ("pptx", "docx"),
        ("docx", "zip"),
        ("odt", "ods"),
        ("odt", "zip"),
        ("epub", "odt"),
        ("zip", "7z"),
        ("7z", "zip"),
        ("gz", "zip"),
        ("tar", "zip"),
        ("flac", "ogg"),
        ("mp4", "webm"),
        ("rtf", "txt"),
        ("doc", "docx"),
    ],
)
def test_content_of_another_format_is_refused(tmp_path, extension, lie):
    assert not _matches(tmp_path, extension, GENUINE[lie])


def test_docx_signature_with_a_broken_zip_is_refused(tmp_path):
    assert not _matches(tmp_path, "docx", b"PK\x03\x04" + b"word/" + b"\x00" * 100)


@pytest.mark.parametrize("extension", ["txt", "csv", "md"])
def test_binary_content_is_not_text(tmp_path, extension):
    assert not _matches(tmp_path, extension, b"text then a NUL \x00 byte")
    assert not _matches(tmp_path, extension, GENUINE["png"])


def test_windows_1252_text_is_text(tmp_path):
    assert _matches(tmp_path, "txt", "Élections municipales : café".encode("cp1252"))


def test_text_sample_cut_inside_a_multibyte_character_is_still_text(tmp_path):
    # One ASCII byte, then two-byte characters: the 8,192-byte head ends mid-character.
    data = b"a" + ("é" * 5000).encode()
    path = tmp_path / "long.txt"
    path.write_bytes(data)
    assert content_matches("txt", data[:8192], path)


def test_html_text_in_a_txt_file_is_accepted_as_plain_text(tmp_path):
    # Accepted on purpose: it is served as text/plain, as an attachment, with nosniff.
    assert _matches(tmp_path, "txt", HTML)


def test_html_text_in_a_txt_file_is_served_as_inert_plain_text(participant, make_document):
    document = make_document("page.txt", HTML)
    for query in ("", "?inline=1"):
        with participant.get(f"/documents/{document.id}/page.txt{query}") as response:
            assert response.status_code == 200
            assert response.mimetype == "text/plain"
            assert response.headers["Content-Disposition"].startswith("attachment")
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.get_data() == HTML


@pytest.mark.parametrize(
    "head",
    [
        HTML,
        b"   <html><body>hi</body></html>",
        b"<svg xmlns='http://www.w3.org/2000/svg'><script>1</script></svg>",
        b"<?xml version='1.0'?><svg/>",
        b"<script>alert(1)</script>",
        b"<!doctype html>",
    ],
)
def test_unknown_admin_allowed_extension_refuses_markup(tmp_path, head):
    assert not _matches(tmp_path, "xyz", head)


def test_unknown_admin_allowed_extension_accepts_other_content(tmp_path):
    assert _matches(tmp_path, "xyz", b"\x00\x01 some proprietary format")


# --- the allow-list -------------------------------------------------------------------------

NEVER_ALLOWED = [
    "html",
    "htm",
    "xhtml",
    "shtml",
    "mht",
    "mhtml",
    "svg",
    "svgz",
    "xml",
    "js",
    "mjs",
    "exe",
    "msi",
    "bat",
    "cmd",
    "com",
    "scr",
    "pif",
    "dll",
    "jar",
    "vbs",
    "vbe",
    "wsf",
    "jse",
    "ps1",
    "hta",
    "sh",
    "php",
]


def test_default_allow_list_has_no_markup_script_or_executable():
    assert DEFAULT_ALLOWED_EXTENSIONS.isdisjoint(NEVER_ALLOWED)
    assert DEFAULT_ALLOWED_EXTENSIONS.isdisjoint(FORBIDDEN_EXTENSIONS)


@pytest.mark.parametrize("extension", NEVER_ALLOWED)
def test_listed_dangerous_extension_is_still_refused(extension):
    chosen = _extensions(f"pdf,{extension},txt")
    assert extension not in chosen
    assert {"pdf", "txt"} <= chosen


def test_allowed_extensions_setting_is_normalised():
    assert _extensions(" .PDF , Docx;.HTML ;;SVG, js ,EXE,") == {"pdf", "docx"}


def test_empty_allowed_extensions_setting_means_the_default():
    assert _extensions(None) == DEFAULT_ALLOWED_EXTENSIONS
    assert _extensions("") == DEFAULT_ALLOWED_EXTENSIONS


@pytest.fixture
def clean_environment(monkeypatch, tmp_path):
    for name in list(__import__("os").environ):
        if name.startswith("PORTAL_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env from the checkout


def _settings(tmp_path: Path) -> dict:
    return load_settings(
        {"INSTANCE_DIR": str(tmp_path / "instance"), "STORAGE": str(tmp_path / "uploads")}
    )


def test_environment_cannot_allow_html_svg_js_or_exe(clean_environment, monkeypatch, tmp_path):
    monkeypatch.setenv("PORTAL_ALLOWED_EXTENSIONS", "pdf,html,HTM,.svg,js,exe,txt")
    allowed = _settings(tmp_path)["ALLOWED_EXTENSIONS"]
    assert allowed == {"pdf", "txt"}


def test_environment_listing_only_dangerous_extensions_allows_nothing(
    clean_environment, monkeypatch, tmp_path
):
    monkeypatch.setenv("PORTAL_ALLOWED_EXTENSIONS", "html,svg,js,exe")
    assert _settings(tmp_path)["ALLOWED_EXTENSIONS"] == frozenset()


def test_env_file_cannot_allow_html_either(clean_environment, tmp_path):
    (tmp_path / ".env").write_text("PORTAL_ALLOWED_EXTENSIONS=html,svg,pdf\n")
    assert _settings(tmp_path)["ALLOWED_EXTENSIONS"] == {"pdf"}


def test_without_setting_the_default_allow_list_applies(clean_environment, tmp_path):
    assert _settings(tmp_path)["ALLOWED_EXTENSIONS"] == DEFAULT_ALLOWED_EXTENSIONS
