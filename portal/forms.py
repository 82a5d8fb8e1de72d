"""Flask-WTF forms: field validation only; who may submit them is decided elsewhere."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, MultipleFileField
from wtforms import (
    BooleanField,
    DateField,
    DateTimeLocalField,
    EmailField,
    PasswordField,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import URL, DataRequired, EqualTo, Length, Optional, ValidationError

DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]


class AccessForm(FlaskForm):
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(max=200)])


class LoginForm(FlaskForm):
    email = EmailField(_l("E-mail"), validators=[DataRequired(), Length(max=254)])
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(max=200)])


class EmptyForm(FlaskForm):
    """A form with nothing but its CSRF token (logout, delete)."""


def session_choices(meetings: list, none_label: str) -> list[tuple[str, str]]:
    return [("", none_label)] + [(str(m.id), m.title) for m in meetings]


class UploadForm(FlaskForm):
    files = MultipleFileField(_l("Files"))
    session = SelectField(_l("Session"), choices=[], validate_choice=True)
    tags = StringField(_l("Tags (separated by commas)"), validators=[Length(max=500)])
    title = StringField(_l("Title (one file only)"), validators=[Length(max=255)])
    description = TextAreaField(_l("Description (one file only)"), validators=[Length(max=5000)])


class DocumentForm(FlaskForm):
    title = StringField(_l("Title"), validators=[DataRequired(), Length(max=255)])
    description = TextAreaField(_l("Description"), validators=[Length(max=5000)])
    session = SelectField(_l("Session"), choices=[], validate_choice=True)
    tags = StringField(_l("Tags (separated by commas)"), validators=[Length(max=500)])


class ReplaceForm(FlaskForm):
    file = FileField(_l("New file"), validators=[DataRequired()])


class MeetingForm(FlaskForm):
    title = StringField(_l("Title"), validators=[DataRequired(), Length(max=200)])
    slug = StringField(_l("Address (slug)"), validators=[Optional(), Length(max=80)])
    starts_at = DateTimeLocalField(
        _l("Starts"), format=DATETIME_FORMATS, validators=[DataRequired()]
    )
    ends_at = DateTimeLocalField(_l("Ends"), format=DATETIME_FORMATS, validators=[DataRequired()])
    facilitators = StringField(_l("Facilitated by"), validators=[Length(max=300)])
    meeting_url = StringField(
        _l("Video-conference link"),
        validators=[Optional(), URL(require_tld=False), Length(max=500)],
    )
    description = TextAreaField(_l("Description"), validators=[Length(max=5000)])


class SettingsForm(FlaskForm):
    title = StringField(_l("Title of the event"), validators=[DataRequired(), Length(max=200)])
    description = TextAreaField(_l("Description"), validators=[Length(max=5000)])
    starts_on = DateField(_l("First day"), validators=[Optional()])
    ends_on = DateField(_l("Last day"), validators=[Optional()])
    access_opens = DateTimeLocalField(
        _l("Access opens"), format=DATETIME_FORMATS, validators=[Optional()]
    )
    access_closes = DateTimeLocalField(
        _l("Access closes"), format=DATETIME_FORMATS, validators=[Optional()]
    )
    password = PasswordField(
        _l("New shared password"), validators=[Optional(), Length(min=8, max=200)]
    )

    def validate_ends_on(self, field: DateField) -> None:
        if field.data and self.starts_on.data and field.data < self.starts_on.data:
            raise ValidationError(_l("The last day must not come before the first day."))

    def validate_access_closes(self, field: DateTimeLocalField) -> None:
        if field.data and self.access_opens.data and field.data <= self.access_opens.data:
            raise ValidationError(_l("The closing date must come after the opening date."))

    password_confirm = PasswordField(
        _l("New shared password, again"),
        validators=[EqualTo("password", message=_l("The two passwords differ."))],
    )


class FacilitatorForm(FlaskForm):
    email = EmailField(_l("E-mail"), validators=[DataRequired(), Length(max=254)])
    name = StringField(_l("Name"), validators=[Length(max=120)])
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(min=8, max=200)])
    is_admin = BooleanField(_l("Administrator"))


class FacilitatorRightsForm(FlaskForm):
    enabled = BooleanField(_l("Enabled"))
    is_admin = BooleanField(_l("Administrator"))
