"""The participants' gate: one shared password opens the portal."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_login import current_user, logout_user

from ..access import Participant, grant, safe_next, unlocked_required
from ..forms import AccessForm, EmptyForm
from ..ratelimit import GATE_FAILURES, client_key, password_check
from ..services.accounts import check_shared_password
from ..services.event import get_event

bp = Blueprint("gate", __name__)


def _closed_page() -> ResponseReturnValue:
    event = get_event()
    return render_template("gate/closed.html", state=event.window_state()), 403


@bp.route("/access", methods=["GET", "POST"])
def access() -> ResponseReturnValue:
    """Show the password form, and open the portal to whoever types the right password."""
    next_url = safe_next(request.values.get("next"), url_for("programme.index"))
    if get_event().window_state() != "open":
        return _closed_page()
    form = AccessForm()
    if form.validate_on_submit():
        client = client_key()
        with password_check(f"access-checks/{client}", [(GATE_FAILURES, client)]):
            version = check_shared_password(form.password.data)
            if version is None:
                GATE_FAILURES.count_failure(client)
        if version is not None:
            grant(Participant(version))
            return redirect(next_url, 303)
        form.password.errors.append(_("This password is not the right one."))
        return render_template("gate/access.html", form=form, next_url=next_url), 401
    status = 400 if request.method == "POST" else 200
    return render_template("gate/access.html", form=form, next_url=next_url), status


@bp.get("/leave")
@unlocked_required
def confirm_leave() -> ResponseReturnValue:
    """Ask to confirm: the form and its token live on this page, not on every page."""
    return render_template("gate/leave.html", form=EmptyForm())


@bp.post("/leave")
def leave() -> ResponseReturnValue:
    """Forget that this browser typed the shared password."""
    form = EmptyForm()
    if form.validate_on_submit() and current_user.is_participant:
        logout_user()
    return redirect(url_for("gate.access"), 303)
