"""The administrators' pages: the event's settings and the facilitator accounts."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_login import current_user

from ..access import admin_required
from ..extensions import db
from ..forms import FacilitatorForm, FacilitatorRightsForm, SettingsForm
from ..models import Facilitator
from ..services.accounts import (
    AccountError,
    create_facilitator,
    set_shared_password,
    update_facilitator,
)
from ..services.event import EventError, get_event, update_event
from ..timezones import local_naive, to_utc

bp = Blueprint("admin", __name__, url_prefix="/manage")


@bp.route("/settings", methods=["GET", "POST"])
@admin_required
def settings() -> ResponseReturnValue:
    """Edit the event, its access window and the shared password."""
    event = get_event()
    form = SettingsForm(obj=None if request.method == "POST" else event)
    if request.method == "GET":
        form.access_opens.data = local_naive(event.access_opens)
        form.access_closes.data = local_naive(event.access_closes)
    if form.validate_on_submit():
        try:
            update_event(
                title=form.title.data,
                description=form.description.data or "",
                starts_on=form.starts_on.data,
                ends_on=form.ends_on.data,
                access_opens=to_utc(form.access_opens.data),
                access_closes=to_utc(form.access_closes.data),
            )
            if form.password.data:
                set_shared_password(form.password.data)
                flash(
                    _("The shared password was changed: every participant is signed out."), "info"
                )
        except EventError as error:
            getattr(form, error.field or "title").errors.append(str(error))
        except AccountError as error:
            form.password.errors.append(str(error))
        else:
            flash(_("The settings were saved."), "success")
            return redirect(url_for("admin.settings"), 303)
    status = 400 if request.method == "POST" else 200
    return render_template("manage/settings.html", form=form), status


def _facilitators_page(form: FacilitatorForm, status: int) -> ResponseReturnValue:
    accounts = db.session.scalars(db.select(Facilitator).order_by(Facilitator.email)).all()
    rights = {a.id: FacilitatorRightsForm(enabled=a.enabled, is_admin=a.is_admin) for a in accounts}
    return render_template(
        "manage/facilitators.html", form=form, accounts=accounts, rights=rights
    ), status


@bp.route("/facilitators", methods=["GET", "POST"])
@admin_required
def facilitators() -> ResponseReturnValue:
    """List facilitator accounts and create new ones."""
    form = FacilitatorForm()
    if form.validate_on_submit():
        try:
            account = create_facilitator(
                form.email.data,
                form.password.data,
                name=form.name.data or "",
                is_admin=form.is_admin.data,
            )
        except AccountError as error:
            form.email.errors = [str(error)]
        else:
            flash(_("The account %(email)s was created.", email=account.email), "success")
            return redirect(url_for("admin.facilitators"), 303)
    return _facilitators_page(form, 400 if request.method == "POST" else 200)


@bp.post("/facilitators/<int:facilitator_id>")
@admin_required
def facilitator_rights(facilitator_id: int) -> ResponseReturnValue:
    """Enable or disable an account, grant or remove admin rights."""
    account = db.get_or_404(Facilitator, facilitator_id)
    form = FacilitatorRightsForm()
    if form.validate_on_submit():
        try:
            update_facilitator(
                account,
                acting=current_user._get_current_object(),
                enabled=form.enabled.data,
                is_admin=form.is_admin.data,
            )
        except AccountError as error:
            flash(str(error), "error")
            return _facilitators_page(FacilitatorForm(formdata=None), 400)
        flash(_("The account %(email)s was updated.", email=account.email), "success")
    return redirect(url_for("admin.facilitators"), 303)
