"""Settings: the one place that reads the environment (SPEC section 5)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import dotenv_values

#: Formats participants actually exchange. Never HTML, SVG, XML, scripts or executables:
#: the browser could run them in the portal's origin.
DEFAULT_ALLOWED_EXTENSIONS = frozenset(
    """
    pdf odt ods odp odg doc docx xls xlsx ppt pptx rtf epub
    txt csv md
    png jpg jpeg gif webp
    mp3 m4a ogg oga opus wav flac
    mp4 m4v mov webm mkv avi
    zip 7z gz tgz tar
    """.split()
)

#: Extensions refused even when an administrator lists them: they execute in a browser
#: or on the participant's computer.
FORBIDDEN_EXTENSIONS = frozenset(
    """
    html htm xhtml xht shtml svg svgz xml xsl xslt js mjs css php phtml py sh bash
    mht mhtml xsd rss atom
    exe msi bat cmd com scr dll jar vbs vbe jse wsf wsh ps1 pif cpl lnk reg apk app dmg hta swf
    """.split()
)


class SettingsError(ValueError):
    """A setting has a value the portal cannot use."""


def _environment() -> dict[str, str]:
    values = {k: v for k, v in dotenv_values(Path.cwd() / ".env").items() if v is not None}
    values.update(os.environ)
    return {k: v for k, v in values.items() if k.startswith("PORTAL_")}


def _secret_key(instance_dir: Path) -> str:
    """Read the instance's generated key, creating it once (mode 0600) if missing."""
    path = instance_dir / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text().strip()
        if len(key) < 32:
            raise SettingsError(
                f"the secret key in {path} is empty or too short: delete the file to generate one"
            ) from None
        return key
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path.read_text().strip()


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}")
    return value


def _extensions(raw: str | None) -> frozenset[str]:
    if not raw:
        return DEFAULT_ALLOWED_EXTENSIONS
    chosen = {part.strip().lower().lstrip(".") for part in raw.replace(";", ",").split(",")}
    return frozenset(chosen - {""} - FORBIDDEN_EXTENSIONS)


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name} must be 1 or 0, not {raw!r}")


def _endpoint_url(raw: str | None) -> str | None:
    if not raw:
        return None
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(
            f"PORTAL_S3_ENDPOINT_URL must be an http(s) address such as https://s3.example.org,"
            f" not {raw!r}"
        )
    return raw.strip()


def _accel_prefix(raw: str | None) -> str:
    if not raw:
        return ""
    prefix = "/" + raw.strip().strip("/") + "/"
    if any(ch in prefix for ch in "\r\n\\?#") or ".." in prefix:
        raise SettingsError("PORTAL_ACCEL_REDIRECT must be a plain path such as /protected/")
    return prefix


def database_url(raw: str | None, instance_dir: Path) -> str:
    """Return the SQLAlchemy URL; plain ``postgresql://`` uses the psycopg 3 driver we ship."""
    if not raw:
        return f"sqlite:///{instance_dir / 'portal.db'}"
    for prefix in ("postgresql://", "postgres://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix) :]
    return raw


def load_settings(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build the Flask configuration from the environment, then apply ``overrides``."""
    env = _environment()
    overrides = dict(overrides or {})
    instance_dir = Path(
        overrides.pop("INSTANCE_DIR", None) or env.get("PORTAL_INSTANCE_DIR") or "instance"
    ).absolute()
    try:
        # Private state: the database, the secret key, the rate-limit counters.
        instance_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise SettingsError(
            f"cannot create the instance folder {instance_dir}: {error.strerror}"
        ) from None

    timezone = env.get("PORTAL_TIMEZONE") or "Europe/Paris"
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(f"PORTAL_TIMEZONE: unknown time zone {timezone!r}") from None

    settings: dict[str, Any] = {
        "INSTANCE_DIR": str(instance_dir),
        "SQLALCHEMY_DATABASE_URI": database_url(env.get("PORTAL_DATABASE_URL"), instance_dir),
        "STORAGE": env.get("PORTAL_STORAGE") or "uploads",
        "MAX_CONTENT_LENGTH": _int(env, "PORTAL_MAX_UPLOAD_MB", 1024, minimum=1) * 1024 * 1024,
        "ALLOWED_EXTENSIONS": _extensions(env.get("PORTAL_ALLOWED_EXTENSIONS")),
        "RATELIMIT_STORAGE_URI": env.get("PORTAL_RATELIMIT_STORAGE_URI")
        or f"sqlite://{instance_dir / 'ratelimit.sqlite'}",
        "PROXY_FIX": _int(env, "PORTAL_PROXY_FIX", 0),
        # With local storage, let nginx send the bytes: the internal location's prefix.
        "ACCEL_REDIRECT": _accel_prefix(env.get("PORTAL_ACCEL_REDIRECT")),
        # S3-compatible storage other than AWS: its address (credentials: AWS_* variables).
        "S3_ENDPOINT_URL": _endpoint_url(env.get("PORTAL_S3_ENDPOINT_URL")),
        # Downloads from S3 as a redirect to a short-lived presigned link.
        "S3_PRESIGNED": _flag(env, "PORTAL_S3_PRESIGNED"),
        "TIMEZONE": timezone,
        "BABEL_DEFAULT_TIMEZONE": timezone,
        # argon2id at OWASP's second recommended profile (m=19 MiB, t=2, p=1).
        "PASSWORD_HASH": {"time_cost": 2, "memory_cost": 19 * 1024, "parallelism": 1},
        "DOWNLOAD_COUNTS": True,
    }
    settings.update(overrides)
    if "SECRET_KEY" not in settings:
        settings["SECRET_KEY"] = env.get("PORTAL_SECRET_KEY") or _secret_key(instance_dir)
    if not str(settings["STORAGE"]).startswith("s3://"):
        settings["STORAGE"] = str(Path(settings["STORAGE"]).absolute())
    return settings
