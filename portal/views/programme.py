"""The participants' side: the programme, one session, a file, a session's ZIP."""

from __future__ import annotations

from collections import defaultdict

from flask import Blueprint, Response, abort, current_app, render_template, request, send_file
from flask.typing import ResponseReturnValue
from sqlalchemy import or_
from sqlalchemy.orm import selectinload
from zipstream import ZIP_STORED, ZipStream

from ..access import unlocked_required
from ..extensions import db
from ..filetypes import INLINE_TYPES
from ..models import Document, Meeting, Tag, document_tags
from ..security import FILE_POLICY, INLINE_PDF_POLICY
from ..services.documents import count_download
from ..services.tags import slugify

bp = Blueprint("programme", __name__)


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
    tags = [slugify(t) for t in request.args.getlist("tag")][:10]
    text = " ".join(request.args.get("q", "").split())[:100]
    return [t for t in tags if t], text


@bp.get("/")
@unlocked_required
def index() -> ResponseReturnValue:
    """List every session in time order with its documents; filter by tags and text."""
    tag_slugs, text = _filters()
    meetings = db.session.scalars(db.select(Meeting).order_by(Meeting.starts_at, Meeting.id)).all()
    by_meeting: dict[int | None, list[Document]] = defaultdict(list)
    for document in db.session.scalars(_filtered_documents(tag_slugs, text)):
        by_meeting[document.meeting_id].append(document)
    used_tags = db.session.scalars(
        db.select(Tag).where(Tag.id.in_(db.select(document_tags.c.tag_id))).order_by(Tag.name)
    ).all()
    filtering = bool(tag_slugs or text)
    if filtering:
        meetings = [m for m in meetings if by_meeting.get(m.id)]
    return render_template(
        "programme/index.html",
        meetings=meetings,
        documents=by_meeting,
        general=by_meeting.get(None, []),
        tags=used_tags,
        selected_tags=tag_slugs,
        text=text,
        filtering=filtering,
    )


@bp.get("/sessions/<slug>")
@unlocked_required
def meeting(slug: str) -> ResponseReturnValue:
    """Show one session and its documents."""
    found = db.session.scalars(db.select(Meeting).where(Meeting.slug == slug)).first()
    if found is None:
        abort(404)
    documents = db.session.scalars(
        db.select(Document)
        .where(Document.meeting_id == found.id)
        .options(selectinload(Document.tags))
        .order_by(Document.created_at, Document.id)
    ).all()
    return render_template("programme/session.html", meeting=found, documents=documents)


def _counts_as_download() -> bool:
    ranges = request.range
    return ranges is None or (bool(ranges.ranges) and ranges.ranges[0][0] == 0)


@bp.get("/documents/<int:document_id>/<filename>")
@unlocked_required
def download(document_id: int, filename: str) -> ResponseReturnValue:
    """Send a document's file, as an attachment unless a safe type is asked inline."""
    document = db.get_or_404(Document, document_id)
    storage = current_app.extensions["portal.storage"]
    if storage.size(document.storage_key) != document.size:
        current_app.logger.error("stored file of document %s is missing or damaged", document.id)
        abort(503)
    inline = request.args.get("inline") == "1" and document.content_type in INLINE_TYPES
    accel_prefix = current_app.config["ACCEL_REDIRECT"]
    response = send_file(
        storage.local_path(document.storage_key),
        mimetype=document.content_type,
        as_attachment=not inline,
        download_name=document.original_name,
        # Behind nginx with X-Accel-Redirect, nginx answers ranges and revalidations itself.
        conditional=not accel_prefix,
        etag=document.sha256,
        last_modified=document.updated_at,
        max_age=0,
    )
    if accel_prefix:
        response.response.close()
        response.set_data(b"")
        response.headers["X-Accel-Redirect"] = f"{accel_prefix}{document.storage_key}"
    response.cache_control.private = True
    response.cache_control.no_cache = True
    is_pdf = inline and document.content_type == "application/pdf"
    response.headers["Content-Security-Policy"] = INLINE_PDF_POLICY if is_pdf else FILE_POLICY
    if is_pdf:
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
    if response.status_code in (200, 206) and _counts_as_download():
        count_download(document.id)
    return response


def unique_member_name(name: str, taken: set[str]) -> str:
    """Return ``name``, or ``name (2).ext``, ``name (3).ext``... not yet in ``taken``."""
    candidate, number = name, 2
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    while candidate.lower() in taken:
        candidate = f"{stem} ({number}).{ext}" if ext else f"{stem} ({number})"
        number += 1
    taken.add(candidate.lower())
    return candidate


@bp.get("/sessions/<slug>/archive.zip")
@unlocked_required
def archive(slug: str) -> ResponseReturnValue:
    """Stream a ZIP of a session's documents, built as it is sent."""
    found = db.session.scalars(db.select(Meeting).where(Meeting.slug == slug)).first()
    if found is None:
        abort(404)
    storage = current_app.extensions["portal.storage"]
    documents = db.session.scalars(
        db.select(Document).where(Document.meeting_id == found.id).order_by(Document.created_at)
    ).all()
    if any(storage.size(d.storage_key) != d.size for d in documents):
        abort(503)
    # Stored, not compressed: the length is known in advance, so browsers show progress.
    stream = ZipStream(compress_type=ZIP_STORED, sized=True)
    taken: set[str] = set()
    for document in documents:
        stream.add_path(
            str(storage.local_path(document.storage_key)),
            arcname=unique_member_name(document.original_name, taken),
        )
    response = Response(stream, mimetype="application/zip", direct_passthrough=True)
    response.headers["Content-Length"] = str(len(stream))
    response.headers["Content-Security-Policy"] = FILE_POLICY
    response.headers.set("Content-Disposition", "attachment", filename=f"{found.slug}.zip")
    response.cache_control.private = True
    response.cache_control.no_store = True
    return response
