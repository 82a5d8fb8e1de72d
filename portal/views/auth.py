"""Facilitators' personal login."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_login import current_user, logout_user

from ..access import can_manage, grant, safe_next
from ..forms import EmptyForm, LoginForm
from ..ratelimit import (
    ACCOUNT_FAILURES,
    LOGIN_FAILURES,
    account_key,
    client_key,
    password_check,
)
from ..services.accounts import authenticate_facilitator, sign_out_everywhere

bp = Blueprint("auth", __name__)


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    """Show the login form and sign a facilitator in."""
    next_url = safe_next(request.values.get("next"), url_for("manage.index"))
    form = LoginForm()
    if form.validate_on_submit():
        client, account = client_key(), account_key()
        limits = [(LOGIN_FAILURES, client), (ACCOUNT_FAILURES, account)]
        with password_check(f"login-checks/{client}", limits):
            facilitator = authenticate_facilitator(form.email.data, form.password.data)
            if facilitator is None:
                LOGIN_FAILURES.count_failure(client)
                ACCOUNT_FAILURES.count_failure(account)
        if facilitator is not None:
            grant(facilitator)
            return redirect(next_url, 303)
        form.password.errors.append(_("Wrong e-mail or password."))
        return render_template("auth/login.html", form=form, next_url=next_url), 401
    status = 400 if request.method == "POST" else 200
    return render_template("auth/login.html", form=form, next_url=next_url), status


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    """End the facilitator's session here and revoke copies of its cookie."""
    form = EmptyForm()
    if form.validate_on_submit() and can_manage(current_user):
        sign_out_everywhere(current_user._get_current_object())
        logout_user()
    return redirect(url_for("auth.login"), 303)
