"""The facilitators' area: dashboard, uploads, documents and sessions."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_babel import ngettext
from flask_login import current_user
from sqlalchemy.orm import selectinload

from ..access import facilitator_required
from ..extensions import db
from ..filetypes import clean_filename
from ..forms import DocumentForm, EmptyForm, MeetingForm, ReplaceForm, UploadForm, session_choices
from ..models import Document, Meeting
from ..services.documents import (
    UploadRejected,
    add_document,
    delete_document,
    replace_document,
    update_document,
    write_download_counts,
)
from ..services.event import EventError, delete_meeting, save_meeting
from ..timezones import local_naive, to_utc
from .uploads_tus import client_settings

bp = Blueprint("manage", __name__, url_prefix="/manage")


def _meetings() -> list[Meeting]:
    return list(db.session.scalars(db.select(Meeting).order_by(Meeting.starts_at, Meeting.id)))


def _chosen_meeting(value: str | None) -> Meeting | None:
    return db.session.get(Meeting, int(value)) if value else None


@bp.get("", strict_slashes=False)
@facilitator_required
def index() -> ResponseReturnValue:
    """Show the sessions, every document with its download count, and the recent uploads."""
    write_download_counts()
    documents = db.session.scalars(
        db.select(Document)
        .options(selectinload(Document.tags), selectinload(Document.meeting))
        .order_by(Document.created_at.desc(), Document.id.desc())
    ).all()
    return render_template(
        "manage/index.html",
        meetings=_meetings(),
        documents=documents,
        total_downloads=sum(d.download_count for d in documents),
        delete_form=EmptyForm(),
    )


@bp.route("/upload", methods=["GET", "POST"])
@facilitator_required
def upload() -> ResponseReturnValue:
    """Receive one or more files; accept or reject each on its own."""
    form = UploadForm()
    form.session.choices = session_choices(_meetings(), _("General documents"))
    if not form.is_submitted():
        form.session.data = request.args.get("session", "")
        return render_template("manage/upload.html", form=form, tus_settings=client_settings())
    files = [f for f in request.files.getlist("files") if f.filename]
    if not form.validate_on_submit() or not files:
        if not files:
            form.files.errors = [_("Choose at least one file.")]
        return render_template("manage/upload.html", form=form, tus_settings=client_settings()), 400
    meeting = _chosen_meeting(form.session.data)
    single = len(files) == 1
    accepted, rejected, statuses = [], [], []
    for file in files:
        try:
            accepted.append(
                add_document(
                    file,
                    file.filename or "",
                    meeting=meeting,
                    tags=form.tags.data or "",
                    title=(form.title.data or "") if single else "",
                    description=(form.description.data or "") if single else "",
                    uploaded_by=current_user._get_current_object(),
                )
            )
        except UploadRejected as rejection:
            rejected.append((clean_filename(file.filename or ""), str(rejection.reason)))
            statuses.append(rejection.status)
    # Nothing stored: say why with the status too (400 bad file, 507 storage full...).
    status = 200 if accepted else max(statuses, default=400)
    return render_template(
        "manage/upload_result.html", accepted=accepted, rejected=rejected, meeting=meeting
    ), status


@bp.route("/documents/<int:document_id>/edit", methods=["GET", "POST"])
@facilitator_required
def edit_document(document_id: int) -> ResponseReturnValue:
    """Change a document's title, description, session and tags."""
    write_download_counts()
    document = db.get_or_404(Document, document_id)
    form = DocumentForm(obj=None if request.method == "POST" else document)
    form.session.choices = session_choices(_meetings(), _("General documents"))
    if request.method == "GET":
        form.session.data = str(document.meeting_id or "")
        form.tags.data = ", ".join(tag.name for tag in document.tags)
    if form.validate_on_submit():
        update_document(
            document,
            title=form.title.data,
            description=form.description.data or "",
            meeting=_chosen_meeting(form.session.data),
            tags=form.tags.data or "",
        )
        flash(_("The document was saved."), "success")
        return redirect(url_for("manage.index"), 303)
    status = 400 if request.method == "POST" else 200
    return render_template(
        "manage/document.html",
        form=form,
        document=document,
        replace_form=ReplaceForm(),
        delete_form=EmptyForm(),
    ), status


@bp.post("/documents/<int:document_id>/replace")
@facilitator_required
def replace_document_file(document_id: int) -> ResponseReturnValue:
    """Put a new file in place of a document's file."""
    document = db.get_or_404(Document, document_id)
    form = ReplaceForm()
    if form.validate_on_submit():
        try:
            replace_document(document, form.file.data, form.file.data.filename or "")
        except UploadRejected as rejection:
            form.file.errors = [str(rejection.reason)]
        else:
            flash(_("The file was replaced."), "success")
            return redirect(url_for("manage.edit_document", document_id=document.id), 303)
    edit_form = DocumentForm(obj=document)
    edit_form.session.choices = session_choices(_meetings(), _("General documents"))
    edit_form.session.data = str(document.meeting_id or "")
    edit_form.tags.data = ", ".join(tag.name for tag in document.tags)
    return render_template(
        "manage/document.html",
        form=edit_form,
        document=document,
        replace_form=form,
        delete_form=EmptyForm(),
    ), 400


@bp.post("/documents/<int:document_id>/delete")
@facilitator_required
def remove_document(document_id: int) -> ResponseReturnValue:
    """Delete a document and its file."""
    document = db.get_or_404(Document, document_id)
    if not EmptyForm().validate_on_submit():
        return redirect(url_for("manage.index"), 303)
    title = document.title
    delete_document(document)
    flash(_("“%(title)s” was deleted.", title=title), "success")
    return redirect(url_for("manage.index"), 303)


def _meeting_form_page(
    form: MeetingForm, meeting: Meeting | None, status: int
) -> ResponseReturnValue:
    return render_template(
        "manage/meeting.html", form=form, meeting=meeting, delete_form=EmptyForm()
    ), status


def _save_meeting_from(form: MeetingForm, meeting: Meeting | None) -> Meeting | None:
    try:
        return save_meeting(
            meeting,
            title=form.title.data,
            slug=(form.slug.data or "").strip() or None,
            starts_at=to_utc(form.starts_at.data),
            ends_at=to_utc(form.ends_at.data),
            description=form.description.data or "",
            facilitators=form.facilitators.data or "",
            meeting_url=form.meeting_url.data or "",
        )
    except EventError as error:
        field = getattr(form, error.field or "ends_at")
        field.errors = [*field.errors, str(error)]
        return None


@bp.route("/sessions/new", methods=["GET", "POST"])
@facilitator_required
def new_meeting() -> ResponseReturnValue:
    """Create a session."""
    form = MeetingForm()
    if form.validate_on_submit():
        meeting = _save_meeting_from(form, None)
        if meeting is not None:
            flash(_("The session was created."), "success")
            return redirect(url_for("manage.index"), 303)
    return _meeting_form_page(form, None, 400 if request.method == "POST" else 200)


@bp.route("/sessions/<int:meeting_id>/edit", methods=["GET", "POST"])
@facilitator_required
def edit_meeting(meeting_id: int) -> ResponseReturnValue:
    """Change a session's details."""
    meeting = db.get_or_404(Meeting, meeting_id)
    form = MeetingForm(obj=None if request.method == "POST" else meeting)
    if request.method == "GET":
        form.starts_at.data = local_naive(meeting.starts_at)
        form.ends_at.data = local_naive(meeting.ends_at)
    if form.validate_on_submit() and _save_meeting_from(form, meeting) is not None:
        flash(_("The session was saved."), "success")
        return redirect(url_for("manage.index"), 303)
    return _meeting_form_page(form, meeting, 400 if request.method == "POST" else 200)


@bp.post("/sessions/<int:meeting_id>/delete")
@facilitator_required
def remove_meeting(meeting_id: int) -> ResponseReturnValue:
    """Delete a session; its documents become general documents."""
    meeting = db.get_or_404(Meeting, meeting_id)
    if not EmptyForm().validate_on_submit():
        return redirect(url_for("manage.index"), 303)
    moved = delete_meeting(meeting)
    flash(_("The session was deleted."), "success")
    if moved:
        flash(
            ngettext(
                "%(num)d document moved to the general documents.",
                "%(num)d documents moved to the general documents.",
                moved,
            ),
            "info",
        )
    return redirect(url_for("manage.index"), 303)
