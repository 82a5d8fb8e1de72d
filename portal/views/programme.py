"""The participants' side: the programme, one session, a preview, a file, a session's ZIP."""

from __future__ import annotations

import datetime as dt
import functools
from collections import defaultdict
from collections.abc import Callable, Sequence
from itertools import groupby
from urllib.parse import quote, urlencode

from flask import Blueprint, abort, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from sqlalchemy import func, or_
from sqlalchemy.orm import selectinload

from ..access import unlocked_required
from ..downloads import archive_response, file_response
from ..extensions import db
from ..filetypes import INLINE_TYPES
from ..i18n import LANGUAGES
from ..models import Document, Meeting, Tag, document_tags
from ..page_cache import cached_page, window
from ..services.tags import slugify
from ..timezones import to_local

bp = Blueprint("programme", __name__)

#: The family a file belongs to, for its icon; anything else is "file".
KINDS = {
    "pdf": "pdf",
    **dict.fromkeys("png jpg jpeg gif webp".split(), "image"),
    **dict.fromkeys("txt md rtf".split(), "text"),
    **dict.fromkeys("odt doc docx epub".split(), "doc"),
    **dict.fromkeys("ods xls xlsx csv".split(), "sheet"),
    **dict.fromkeys("odp ppt pptx".split(), "slides"),
    **dict.fromkeys("odg".split(), "image"),
    **dict.fromkeys("mp3 m4a ogg oga opus wav flac".split(), "audio"),
    **dict.fromkeys("mp4 m4v mov webm mkv avi".split(), "video"),
    **dict.fromkeys("zip 7z gz tgz tar".split(), "archive"),
}
MAX_TAGS = 10
MAX_TEXT = 100


@bp.app_template_filter("document_kind")
def document_kind(document: Document) -> str:
    """Name the family of a document's file (pdf, image, sheet...) for its icon."""
    return KINDS.get(document.extension, "file")


@bp.app_template_test("previewable")
def previewable(document: Document) -> bool:
    """Say whether the browser may show this document inline (PDF and raster images only)."""
    return document.content_type in INLINE_TYPES


#: What Werkzeug's default converter leaves unescaped in a path segment (``to_url``).
SEGMENT_SAFE = "!$&'()*+,/:;=@"


@bp.app_template_filter("path_segment")
def path_segment(value: str) -> str:
    """Escape a file name as ``url_for`` would, without building a whole URL per document."""
    return quote(value, safe=SEGMENT_SAFE)


@bp.app_template_filter("filesize")
def filesize(size: int, units: Sequence[str]) -> str:
    """Write a size with its unit, as the ``size`` macro always did (same rounding)."""
    if size < 1024:
        return f"{size} {units[0]}"
    if size < 1024 * 1024:
        return f"{int(round(size / 1024, 0))} {units[1]}"
    if size < 1024 * 1024 * 1024:
        return f"{round(size / 1048576, 1)} {units[2]}"
    return f"{round(size / 1073741824, 2)} {units[3]}"


def _prefix(url: str, tail: str) -> str:
    assert url.endswith(tail)  # noqa: S101 - the routes below fix this shape
    return url[: -len(tail)]


@bp.app_template_global("item_words")
def item_words() -> dict[str, object]:
    """Translate, and build the links' common prefixes, once per page for every item."""
    return {
        "file": _("file"),
        "preview": _("Preview"),
        "tags": _("Tags"),
        "units": [_("B"), _("KB"), _("MB"), _("GB")],
        "file_prefix": _prefix(url_for("programme.download", document_id=0, filename="_"), "0/_"),
        "preview_prefix": _prefix(url_for("programme.preview", document_id=0), "0"),
    }


def _filtered_documents(tag_slugs: list[str], text: str):  # type: ignore[no-untyped-def]
    query = db.select(Document).options(selectinload(Document.tags))
    for slug in tag_slugs:
        query = query.where(Document.tags.any(Tag.slug == slug))
    if text:
        query = query.where(
            or_(
                Document.title.icontains(text, autoescape=True),
                Document.description.icontains(text, autoescape=True),
                Document.original_name.icontains(text, autoescape=True),
                Document.tags.any(Tag.name.icontains(text, autoescape=True)),
            )
        )
    return query.order_by(Document.created_at, Document.id)


def _filters() -> tuple[list[str], str]:
    tags = [slugify(t) for t in request.args.getlist("tag")][:MAX_TAGS]
    text = " ".join(request.args.get("q", "").split())[:MAX_TEXT]
    return list(dict.fromkeys(t for t in tags if t)), text


def _canonical_filters() -> bool:
    """Say whether the query string is exactly what the programme's own links produce."""
    allowed = {"q", "tag", "lang"}
    if not set(request.args) <= allowed:
        return False
    if any(len(request.args.getlist(k)) > 1 for k in ("q", "lang")):
        return False
    if "lang" in request.args and request.args["lang"] not in LANGUAGES:
        return False
    tags, text = _filters()
    given_text = request.args.get("q")
    return tags == request.args.getlist("tag") and (given_text is None or given_text == text != "")


def _lang_only() -> bool:
    return set(request.args) <= {"lang"} and request.args.getlist("lang") in ([], ["fr"], ["en"])


def _filter_url(tag_slugs: list[str], text: str) -> Callable[..., str]:
    """Build links that change one filter and keep the others (shareable addresses)."""

    @functools.cache  # a page links the same few tags many times
    def build(add: str | None = None, remove: str | None = None, drop_text: bool = False) -> str:
        tags = [t for t in tag_slugs if t != remove]
        if add and add not in tags:
            tags.append(add)
        args = [("q", text)] if text and not drop_text else []
        args += [("tag", t) for t in tags]
        base = url_for("programme.index")
        return f"{base}?{urlencode(args)}" if args else base

    return build


def _archive_totals() -> dict[int, tuple[int, int]]:
    """Count and weigh each session's documents in the database, not in Python."""
    rows = db.session.execute(
        db.select(Document.meeting_id, func.count(Document.id), func.sum(Document.size))
        .where(Document.meeting_id.is_not(None))
        .group_by(Document.meeting_id)
    )
    return {meeting_id: (count, int(size or 0)) for meeting_id, count, size in rows}


def _now_and_next(meetings: Sequence[Meeting], now: dt.datetime) -> tuple[set[int], int | None]:
    """Return the sessions under way, and the next one when none is."""
    current = {m.id for m in meetings if m.starts_at <= now < m.ends_at}
    upcoming = None if current else next((m.id for m in meetings if m.starts_at > now), None)
    return current, upcoming


def _by_day(meetings: Sequence[Meeting]) -> list[tuple[dt.date, list[Meeting]]]:
    def local_day(meeting: Meeting) -> dt.date:
        local = to_local(meeting.starts_at)
        assert local is not None  # noqa: S101 - a session always has a start
        return local.date()

    return [(day, list(group)) for day, group in groupby(meetings, key=local_day)]


@bp.get("/")
@unlocked_required
@cached_page(_canonical_filters)
def index() -> ResponseReturnValue:
    """List the sessions day by day with their documents; filter by tags and text."""
    tag_slugs, text = _filters()
    meetings = db.session.scalars(db.select(Meeting).order_by(Meeting.starts_at, Meeting.id)).all()
    now = dt.datetime.now(dt.UTC)
    current, upcoming = _now_and_next(meetings, now)
    window([t for m in meetings for t in (m.starts_at, m.ends_at)], now)
    by_meeting: dict[int | None, list[Document]] = defaultdict(list)
    for document in db.session.scalars(_filtered_documents(tag_slugs, text)):
        by_meeting[document.meeting_id].append(document)
    used_tags = db.session.scalars(
        db.select(Tag).where(Tag.id.in_(db.select(document_tags.c.tag_id))).order_by(Tag.name)
    ).all()
    filtering = bool(tag_slugs or text)
    if filtering:
        meetings = [m for m in meetings if by_meeting.get(m.id)]
    tag_names = {t.slug: t.name for t in used_tags}
    return render_template(
        "programme/index.html",
        days=_by_day(meetings),
        meetings=meetings,
        documents=by_meeting,
        general=by_meeting.get(None, []),
        totals=_archive_totals(),
        current=current,
        upcoming=upcoming,
        tags=used_tags,
        tag_names=tag_names,
        selected_tags=tag_slugs,
        text=text,
        filtering=filtering,
        filter_url=_filter_url(tag_slugs, text),
    )


def _meeting_or_404(slug: str) -> Meeting:
    found = db.session.scalars(db.select(Meeting).where(Meeting.slug == slug)).first()
    if found is None:
        abort(404)
    return found


@bp.get("/sessions/<slug>")
@unlocked_required
@cached_page(_lang_only)
def meeting(slug: str) -> ResponseReturnValue:
    """Show one session and its documents."""
    found = _meeting_or_404(slug)
    documents = db.session.scalars(
        db.select(Document)
        .where(Document.meeting_id == found.id)
        .options(selectinload(Document.tags))
        .order_by(Document.created_at, Document.id)
    ).all()
    now = dt.datetime.now(dt.UTC)
    window([found.starts_at, found.ends_at], now)
    return render_template(
        "programme/session.html",
        meeting=found,
        documents=documents,
        total_size=sum(d.size for d in documents),
        under_way=found.starts_at <= now < found.ends_at,
    )


#: The preview page embeds the file itself: PDFs need ``object-src 'self'``. Scripts stay
#: limited to the portal's own files, as on every other page.
PREVIEW_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


@bp.get("/preview/<int:document_id>")
@unlocked_required
@cached_page(_lang_only)
def preview(document_id: int) -> ResponseReturnValue:
    """Show a PDF or an image inside a page, with a download button and a way back."""
    document = db.get_or_404(Document, document_id)
    if not previewable(document):
        message = _("This document cannot be shown in the browser. Download it instead.")
        return render_template(
            "errors/error.html", code=404, title=_("No preview"), message=message
        ), 404
    window([], dt.datetime.now(dt.UTC))
    response = render_template("programme/preview.html", document=document)
    return response, 200, {"Content-Security-Policy": PREVIEW_POLICY}


@bp.get("/documents/<int:document_id>/<filename>")
@unlocked_required
def download(document_id: int, filename: str) -> ResponseReturnValue:
    """Send a document's file, as an attachment unless a safe type is asked inline."""
    document = db.get_or_404(Document, document_id)
    return file_response(document, inline=request.args.get("inline") == "1")


@bp.get("/sessions/<slug>/archive.zip")
@unlocked_required
def archive(slug: str) -> ResponseReturnValue:
    """Stream a ZIP of a session's documents."""
    found = _meeting_or_404(slug)
    documents = db.session.scalars(
        db.select(Document).where(Document.meeting_id == found.id).order_by(Document.created_at)
    ).all()
    return archive_response(documents, f"{found.slug}.zip")
