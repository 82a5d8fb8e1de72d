"""Tags and slugs: turning what facilitators type into stable labels."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from sqlalchemy.exc import IntegrityError

from ..extensions import db
from ..models import Tag

MAX_TAG_LENGTH = 60


def slugify(text: str, max_length: int = MAX_TAG_LENGTH) -> str:
    """Return a lower-case ASCII slug: ``Élections municipales`` → ``elections-municipales``."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:max_length].rstrip("-")


def split_tags(raw: str | Iterable[str]) -> list[str]:
    """Split a comma-separated field into clean, distinct tag names."""
    parts = raw.split(",") if isinstance(raw, str) else list(raw)
    names: dict[str, str] = {}
    for part in parts:
        name = " ".join(part.split())[:MAX_TAG_LENGTH]
        slug = slugify(name)
        if slug and slug not in names:
            names[slug] = name
    return list(names.values())


def tags_for(names: str | Iterable[str]) -> list[Tag]:
    """Return the tags with these names, creating the missing ones (no commit)."""
    wanted = {slugify(name): name for name in split_tags(names)}
    if not wanted:
        return []
    found = {
        tag.slug: tag for tag in db.session.scalars(db.select(Tag).where(Tag.slug.in_(wanted)))
    }
    for slug, name in wanted.items():
        if slug in found:
            continue
        try:
            # Another upload may create the same tag at the same moment.
            with db.session.begin_nested():
                tag = Tag(name=name, slug=slug)
                db.session.add(tag)
            found[slug] = tag
        except IntegrityError:
            found[slug] = db.session.scalars(db.select(Tag).where(Tag.slug == slug)).one()
    return [found[slug] for slug in wanted]
