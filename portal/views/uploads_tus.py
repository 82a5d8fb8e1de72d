"""The tus endpoints under /manage/tus: resumable uploads for facilitators only.

Strangers are sent to the login page and the CSRF token (``X-CSRFToken`` header) is checked
by the request guard before any of these views runs. Each upload belongs to the facilitator
who created it: anyone else gets 404, as if it did not exist.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from flask_babel import gettext as _
from flask_login import current_user
from werkzeug.exceptions import ClientDisconnected

from ..extensions import db
from ..filetypes import clean_filename
from ..models import Meeting
from ..services.documents import UploadRejected, add_document, check_name
from ..storage import FULL_ERRNOS, StorageFull
from ..tus import (
    CLIENT_CHUNK_BYTES,
    TUS_EXTENSIONS,
    TUS_VERSION,
    Partial,
    PartialStore,
    TusError,
    UploadBusy,
    parse_metadata,
)

bp = Blueprint("tus", __name__, url_prefix="/manage/tus")

LIMITS = {"tags": 500, "title": 255, "description": 5000}


def _store() -> PartialStore:
    return PartialStore(current_app.config["INSTANCE_DIR"])


def _reply(status: int, message: str = "", **headers: str | int) -> Response:
    """Answer with the tus headers, and a JSON ``error`` the page can show when refusing."""
    response = jsonify(error=message) if message else Response(status=status)
    response.status_code = status
    response.headers["Tus-Resumable"] = TUS_VERSION
    response.headers["Cache-Control"] = "no-store"
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = str(value)
    return response


def _version_refused(required: bool = True) -> Response | None:
    version = request.headers.get("Tus-Resumable")
    if version != TUS_VERSION and (required or version is not None):
        return _reply(412, _("This upload client is not supported."), Tus_Version=TUS_VERSION)
    return None


def _owned(upload_id: str) -> Partial | None:
    partial = _store().get(upload_id)
    if partial is None or partial.owner != current_user.id:
        return None
    return partial


def _not_found() -> Response:
    return _reply(404, _("This upload does not exist, or no longer."))


def _max_size() -> int:
    return int(current_app.config["MAX_CONTENT_LENGTH"])


def _capabilities() -> Response:
    """Say which tus version and extensions the portal speaks, and the largest file."""
    return _reply(
        204,
        Tus_Version=TUS_VERSION,
        Tus_Extension=TUS_EXTENSIONS,
        Tus_Max_Size=_max_size(),
        Allow="OPTIONS, POST",
    )


def _metadata_refusal(metadata: dict[str, str]) -> tuple[int, str] | None:
    if not metadata.get("filename", "").strip():
        return 400, _("The file has no name.")
    try:
        check_name(metadata["filename"])
    except UploadRejected as rejection:
        return rejection.status, str(rejection.reason)
    for key, limit in LIMITS.items():
        if len(metadata.get(key, "")) > limit:
            return 400, _("A field is too long.")
    session = metadata.get("session", "")
    if session and (not session.isdigit() or db.session.get(Meeting, int(session)) is None):
        return 400, _("This session does not exist.")
    return None


@bp.route("", methods=["POST", "OPTIONS"], provide_automatic_options=False)
def create() -> Response:
    """Start an upload: check the declared length and the file's name before any byte is sent."""
    if request.method == "OPTIONS":
        return _capabilities()
    if refused := _version_refused():
        return refused
    if "Upload-Defer-Length" in request.headers:
        return _reply(400, _("The upload must say how large the file is."))
    declared = request.headers.get("Upload-Length", "")
    if not declared.isascii() or not declared.isdigit() or len(declared) > 18:
        return _reply(400, _("The upload must say how large the file is."))
    length = int(declared)
    if length > _max_size():
        limit = _max_size() // (1024 * 1024)
        return _reply(
            413, _("This file is larger than the portal accepts (%(limit)d MB).", limit=limit)
        )
    try:
        metadata = parse_metadata(request.headers.get("Upload-Metadata"))
    except ValueError:
        return _reply(400, _("The description of the upload could not be read."))
    if refusal := _metadata_refusal(metadata):
        return _reply(refusal[0], refusal[1])
    store = _store()
    # Creating uploads is when abandoned ones are swept, so none lingers past its expiry.
    store.remove_stale()
    partial = store.create(current_user.id, length, metadata)
    headers: dict[str, str | int] = {
        "Location": url_for("tus.upload", upload_id=partial.id),
        "Upload-Offset": 0,
    }
    if length == 0:
        with partial.locked():
            headers["Portal-Upload-Result"] = _finish(store, partial)
    return _reply(201, **headers)


def _finish(store: PartialStore, partial: Partial) -> str:
    """Hand the complete file to the same checks and atomic commit as a plain upload."""
    metadata = partial.metadata
    session = metadata.get("session", "")
    meeting = db.session.get(Meeting, int(session)) if session.isdigit() else None
    name = clean_filename(metadata.get("filename", ""))
    try:
        with partial.open_data() as handle:
            document = add_document(
                handle,
                metadata.get("filename", ""),
                meeting=meeting,
                tags=metadata.get("tags", ""),
                title=metadata.get("title", ""),
                description=metadata.get("description", ""),
                uploaded_by=current_user._get_current_object(),
            )
        result = {
            "state": "accepted",
            "document": document.id,
            "name": document.original_name,
            "title": document.title,
        }
    except UploadRejected as rejection:
        result = {"state": "rejected", "name": name, "reason": str(rejection.reason)}
    except StorageFull:
        reason = _("The portal has no room left for this file. Nothing was saved.")
        result = {"state": "rejected", "name": name, "reason": reason}
    partial.info["result"] = result
    partial.touch()
    partial.save_info()
    store.drop_data(partial)
    return str(result["state"])


@bp.route("/<upload_id>", methods=["GET", "PATCH", "DELETE"])
def upload(upload_id: str) -> Response:
    """One upload: its state (GET, HEAD), its next bytes (PATCH), its end (DELETE)."""
    if request.method == "PATCH":
        return _append(upload_id)
    if request.method == "DELETE":
        return _terminate(upload_id)
    return _status(upload_id)


def _status(upload_id: str) -> Response:
    """The upload's offset (tus HEAD) and, as JSON, its result once the file is in."""
    # HEAD without the header is answered like GET (monitoring, link checkers); a wrong
    # version is refused.
    if request.method == "HEAD" and (refused := _version_refused(required=False)):
        return refused
    partial = _owned(upload_id)
    if partial is None:
        return _not_found()
    body = {
        "state": "uploading",
        "offset": partial.offset,
        "length": partial.length,
        "name": clean_filename(partial.metadata.get("filename", "")),
    }
    if partial.result:
        body.update(partial.result)
        if partial.result["state"] == "accepted":
            body["url"] = url_for("manage.edit_document", document_id=partial.result["document"])
    response = jsonify(body)
    response.headers["Tus-Resumable"] = TUS_VERSION
    response.headers["Cache-Control"] = "no-store"
    response.headers["Upload-Offset"] = str(partial.offset)
    response.headers["Upload-Length"] = str(partial.length)
    return response


def _append(upload_id: str) -> Response:
    """Store the next bytes of an upload; on the last one, check and record the document."""
    if refused := _version_refused():
        return refused
    partial = _owned(upload_id)
    if partial is None:
        return _not_found()
    declared = request.headers.get("Upload-Offset", "")
    if not declared.isascii() or not declared.isdigit():
        return _reply(400, _("The upload must say where its bytes go."))
    offset = int(declared)
    if partial.result is not None:
        # The reply to the last request was lost: say it is done, once more.
        if offset != partial.length:
            return _reply(409, _("The upload is already complete."), Upload_Offset=partial.length)
        return _reply(
            204, Upload_Offset=partial.length, Portal_Upload_Result=partial.result["state"]
        )
    store = _store()
    try:
        with partial.locked() as handle:
            new_offset = partial.append(handle, request.stream, offset)
            headers: dict[str, str | int] = {"Upload-Offset": new_offset}
            if new_offset == partial.length:
                headers["Portal-Upload-Result"] = _finish(store, partial)
    except UploadBusy:
        return _reply(423, _("This upload is already being sent; try again in a moment."))
    except FileNotFoundError:
        return _not_found()
    except TusError as error:
        if error.status == 409:
            return _reply(409, _("The upload is out of step; it resumes from the stored part."))
        return _reply(error.status, _("More bytes were sent than the upload declared."))
    except ClientDisconnected:
        # What arrived is stored; the client asks for the offset (HEAD) and resumes from it.
        return _reply(400, _("The connection was cut; the upload resumes from where it stopped."))
    except OSError as error:
        if error.errno in FULL_ERRNOS:
            return _reply(507, _("The portal has no room left for this file. Nothing was saved."))
        raise
    return _reply(204, **headers)


def _terminate(upload_id: str) -> Response:
    """Abandon an upload: its received bytes are removed (a finished document stays)."""
    if refused := _version_refused():
        return refused
    partial = _owned(upload_id)
    if partial is None:
        return _not_found()
    store = _store()
    try:
        with partial.locked():
            store.delete(partial)
    except UploadBusy:
        return _reply(423, _("This upload is already being sent; try again in a moment."))
    except FileNotFoundError:
        store.delete(partial)
    return _reply(204)


def client_settings() -> dict[str, str | int]:
    """Return the data attributes the upload page gives upload.js."""
    return {
        "endpoint": url_for("tus.create"),
        "chunk-size": int(current_app.config.get("TUS_CHUNK_BYTES", CLIENT_CHUNK_BYTES)),
        "max-size": _max_size(),
    }
