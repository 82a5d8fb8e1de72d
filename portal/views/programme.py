"""The participants' side: the programme, one session, a file, a session's ZIP."""

from __future__ import annotations

from collections import defaultdict

from flask import Blueprint, abort, render_template, request
from flask.typing import ResponseReturnValue
from sqlalchemy import or_
from sqlalchemy.orm import selectinload

from ..access import unlocked_required
from ..downloads import archive_response, file_response
from ..extensions import db
from ..models import Document, Meeting, Tag, document_tags
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
    found = db.session.scalars(db.select(Meeting).where(Meeting.slug == slug)).first()
    if found is None:
        abort(404)
    documents = db.session.scalars(
        db.select(Document).where(Document.meeting_id == found.id).order_by(Document.created_at)
    ).all()
    return archive_response(documents, f"{found.slug}.zip")
