"""What a file claims to be and what it is: names, extensions, signatures, media types.

A hand-written table rather than libmagic: the question is not "what is this file?"
but "does this content agree with this extension?", answered the same way on every
machine, and with no system library to install.
"""

from __future__ import annotations

import unicodedata
import zipfile
from collections.abc import Callable
from pathlib import Path

MEDIA_TYPES = {
    "pdf": "application/pdf",
    "odt": "application/vnd.oasis.opendocument.text",
    "ods": "application/vnd.oasis.opendocument.spreadsheet",
    "odp": "application/vnd.oasis.opendocument.presentation",
    "odg": "application/vnd.oasis.opendocument.graphics",
    "doc": "application/msword",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xls": "application/vnd.ms-excel",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "ppt": "application/vnd.ms-powerpoint",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "rtf": "application/rtf",
    "epub": "application/epub+zip",
    "txt": "text/plain",
    "csv": "text/csv",
    "md": "text/markdown",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "mp3": "audio/mpeg",
    "m4a": "audio/mp4",
    "ogg": "audio/ogg",
    "oga": "audio/ogg",
    "opus": "audio/ogg",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp4": "video/mp4",
    "m4v": "video/mp4",
    "mov": "video/quicktime",
    "webm": "video/webm",
    "mkv": "video/x-matroska",
    "avi": "video/x-msvideo",
    "zip": "application/zip",
    "7z": "application/x-7z-compressed",
    "gz": "application/gzip",
    "tgz": "application/gzip",
    "tar": "application/x-tar",
}

#: Types a browser may show inline with ``?inline=1``; never HTML, SVG or text.
INLINE_TYPES = frozenset({"application/pdf", "image/png", "image/jpeg", "image/gif", "image/webp"})

#: Already-compressed formats, stored as they are in a session's ZIP.
COMPRESSED_EXTENSIONS = frozenset(
    "pdf odt ods odp odg docx xlsx pptx epub png jpg jpeg gif webp mp3 m4a ogg oga opus "
    "flac mp4 m4v mov webm mkv zip 7z gz tgz".split()
)

_BIDI_AND_INVISIBLE = {
    "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",
    "\u2066", "\u2067", "\u2068", "\u2069", "\u061c", "\ufeff",
}  # fmt: skip

MAX_NAME_BYTES = 255


def clean_filename(raw: str, fallback: str = "document") -> str:
    """Keep the last path component, drop control and bidi characters, fit in 255 bytes."""
    name = unicodedata.normalize("NFC", raw or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(
        ch
        for ch in name
        if ch not in _BIDI_AND_INVISIBLE and unicodedata.category(ch) not in {"Cc", "Cs", "Co"}
    )
    name = " ".join(name.split()).strip(" .")
    if not name:
        return fallback
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or len(ext.encode()) > 16:
        stem, ext = name, ""
    suffix = f".{ext}" if ext else ""
    budget = MAX_NAME_BYTES - len(suffix.encode())
    cut = stem.encode()[:budget].decode("utf-8", "ignore").rstrip(" .")
    return (cut or fallback) + suffix


def extension_of(name: str) -> str:
    """Return the lower-case extension of a file name, without its dot."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return ""
    if ext.lower() == "gz" and stem.lower().endswith(".tar"):
        return "gz"
    return ext.lower()


def media_type(extension: str) -> str:
    """Return the media type the portal sends for an extension."""
    return MEDIA_TYPES.get(extension, "application/octet-stream")


def _starts(*signatures: bytes) -> Callable[[bytes, Path], bool]:
    return lambda head, path: any(head.startswith(s) for s in signatures)


def _riff(kind: bytes) -> Callable[[bytes, Path], bool]:
    return lambda head, path: head[:4] == b"RIFF" and head[8:12] == kind


def _iso_media(head: bytes, path: Path) -> bool:
    return head[4:8] == b"ftyp"


def _mp3(head: bytes, path: Path) -> bool:
    return head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)


def _tar(head: bytes, path: Path) -> bool:
    return head[257:262] == b"ustar"


def _zip_containing(*markers: str) -> Callable[[bytes, Path], bool]:
    """Check a ZIP-based format by its signature and the entries its format requires."""

    def check(head: bytes, path: Path) -> bool:
        if not head.startswith(b"PK\x03\x04"):
            return False
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
        except (zipfile.BadZipFile, OSError, ValueError):
            return False
        return any(
            marker in names or any(n.startswith(marker) for n in names) for marker in markers
        )

    return check


def _opendocument(mimetype: str) -> Callable[[bytes, Path], bool]:
    # ODF puts its media type, uncompressed, right after the first local header.
    return lambda head, path: head.startswith(b"PK\x03\x04") and mimetype.encode() in head[:200]


def _text(head: bytes, path: Path) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
        return True
    except UnicodeDecodeError as error:
        # The sample may end in the middle of a multi-byte character.
        if error.reason == "unexpected end of data":
            return True
    try:
        head.decode("cp1252")
    except UnicodeDecodeError:
        return False
    return True


_OLE2 = _starts(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")

SIGNATURES: dict[str, Callable[[bytes, Path], bool]] = {
    "pdf": lambda head, path: b"%PDF-" in head[:1024],
    "png": _starts(b"\x89PNG\r\n\x1a\n"),
    "jpg": _starts(b"\xff\xd8\xff"),
    "jpeg": _starts(b"\xff\xd8\xff"),
    "gif": _starts(b"GIF87a", b"GIF89a"),
    "webp": _riff(b"WEBP"),
    "doc": _OLE2,
    "xls": _OLE2,
    "ppt": _OLE2,
    "docx": _zip_containing("word/"),
    "xlsx": _zip_containing("xl/"),
    "pptx": _zip_containing("ppt/"),
    "odt": _opendocument("application/vnd.oasis.opendocument.text"),
    "ods": _opendocument("application/vnd.oasis.opendocument.spreadsheet"),
    "odp": _opendocument("application/vnd.oasis.opendocument.presentation"),
    "odg": _opendocument("application/vnd.oasis.opendocument.graphics"),
    "epub": _opendocument("application/epub+zip"),
    "rtf": _starts(b"{\\rtf"),
    "mp3": _mp3,
    "m4a": _iso_media,
    "mp4": _iso_media,
    "m4v": _iso_media,
    "mov": _iso_media,
    "ogg": _starts(b"OggS"),
    "oga": _starts(b"OggS"),
    "opus": _starts(b"OggS"),
    "wav": _riff(b"WAVE"),
    "avi": _riff(b"AVI "),
    "flac": _starts(b"fLaC"),
    "webm": _starts(b"\x1a\x45\xdf\xa3"),
    "mkv": _starts(b"\x1a\x45\xdf\xa3"),
    "zip": _starts(b"PK\x03\x04", b"PK\x05\x06"),
    "7z": _starts(b"7z\xbc\xaf\x27\x1c"),
    "gz": _starts(b"\x1f\x8b"),
    "tgz": _starts(b"\x1f\x8b"),
    "tar": _tar,
    "txt": _text,
    "csv": _text,
    "md": _text,
}


def content_matches(extension: str, head: bytes, path: Path) -> bool:
    """Say whether the first bytes of a file (and the file itself) fit its extension."""
    check = SIGNATURES.get(extension)
    if check is None:
        # An extension the administrator allowed but the portal knows nothing of:
        # accept it, unless the content looks like a page a browser would run.
        return not _looks_like_markup(head)
    return check(head, path)


def _looks_like_markup(head: bytes) -> bool:
    sample = head[:1024].lstrip().lower()
    return sample.startswith((b"<!doctype", b"<html", b"<svg", b"<?xml", b"<script"))
