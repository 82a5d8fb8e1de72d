"""``portal demo``: the programme of the national session of 21–27 November 2020."""

from __future__ import annotations

import datetime as dt
import io
import struct
import zlib
from zoneinfo import ZoneInfo

from .extensions import db
from .models import Document, Meeting
from .services.documents import add_document
from .services.event import get_event, save_meeting, update_event

PARIS = ZoneInfo("Europe/Paris")

EVENT_TITLE = "Session nationale des États généraux des migrations 2020"
EVENT_DESCRIPTION = (
    "Huit temps d'échange en visioconférence, du 21 au 27 novembre 2020, pour témoigner des "
    "réalités vécues dans les territoires, dresser le bilan des projets de l'année et définir "
    "ensemble les pistes d'action de l'année à venir."
)

# (day of November 2020, start hour, title, description, tags)
SESSIONS = [
    (
        21,
        10,
        "Fonctionnement et mobilisations des Assemblées locales en 2020",
        "Tour des Assemblées locales : comment elles se sont organisées et mobilisées cette année.",
        ["Assemblées locales", "Bilan 2020"],
    ),
    (
        22,
        17,
        "Témoignages : accueil et accompagnement dans les territoires",
        "Partager les réalités vécues par les personnes étrangères et les structures qui les "
        "accompagnent.",
        ["Témoignages"],
    ),
    (
        23,
        18,
        "Accès aux droits pendant la crise sanitaire",
        "Ce que la crise sanitaire a changé pour l'accès aux droits et aux préfectures.",
        ["Témoignages", "Accès aux droits"],
    ),
    (
        24,
        18,
        "Bilan des chantiers thématiques : élections municipales",
        "Le groupe de travail sur les élections municipales présente son année.",
        ["Chantiers thématiques", "Bilan 2020"],
    ),
    (
        25,
        14,
        "Bilan des chantiers thématiques : autres groupes de travail",
        "Les autres chantiers lancés en 2019 rendent compte de leurs avancées.",
        ["Chantiers thématiques", "Bilan 2020"],
    ),
    (
        25,
        18,
        "Le rôle du Groupe de facilitation",
        "Coordination, communication et prise de position au niveau national.",
        ["Organisation"],
    ),
    (
        26,
        18,
        "Communication et plaidoyer communs",
        "Porter ensemble une parole forte dans le cadre du Manifeste commun.",
        ["Plaidoyer", "Organisation"],
    ),
    (
        27,
        17,
        "Perspectives et priorités des EGM pour l'année à venir",
        "Définir ensemble des pistes d'action et identifier celles qui semblent prioritaires.",
        ["Perspectives 2021"],
    ),
]


class DemoRefused(Exception):
    """The instance already has sessions or documents."""


def _pdf_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(title: str, lines: list[str]) -> bytes:
    """Return a small, valid one-page PDF showing ``title`` and ``lines``."""
    commands = ["BT", "/F1 18 Tf", "56 780 Td", f"({_pdf_text(title)}) Tj", "/F1 11 Tf"]
    for line in lines:
        commands += ["0 -22 Td", f"({_pdf_text(line)}) Tj"]
    commands.append("ET")
    content = "\n".join(commands).encode("cp1252", "replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1))
    out.write(b"startxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


def make_png(width: int = 48, height: int = 48) -> bytes:
    """Return a small PNG: a two-colour banner."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(
        b"\x00"
        + b"".join((b"\x1d\x4e\x89" if y < height // 2 else b"\xe8\x6a\x1c") for _ in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def load_demo() -> tuple[int, int]:
    """Create the eight sessions and their documents; return how many of each."""
    if (
        db.session.scalar(db.select(Meeting.id).limit(1)) is not None
        or db.session.scalar(db.select(Document.id).limit(1)) is not None
    ):
        raise DemoRefused("the instance is not empty; the demo fills only an empty one")
    update_event(
        title=EVENT_TITLE,
        description=EVENT_DESCRIPTION,
        starts_on=dt.date(2020, 11, 21),
        ends_on=dt.date(2020, 11, 27),
        keep_window=True,
    )
    get_event()
    documents = 0
    for number, (day, hour, title, description, tags) in enumerate(SESSIONS, start=1):
        starts = dt.datetime(2020, 11, day, hour, tzinfo=PARIS)
        meeting = save_meeting(
            None,
            title=title,
            starts_at=starts,
            ends_at=starts + dt.timedelta(hours=2),
            description=description,
            facilitators="Groupe de facilitation",
        )
        support = make_pdf(
            f"Support - {title}"[:80],
            [f"Temps d'échange n° {number}", description[:90], "Document de démonstration."],
        )
        add_document(
            io.BytesIO(support),
            f"support-temps-{number}.pdf",
            meeting=meeting,
            tags=[*tags, "Support"],
            title=f"Support de présentation – {title}",
        )
        notes = (
            f"Compte-rendu – {title}\n\n"
            "Synthèse des échanges (démonstration).\n"
            "- Points saillants\n- Questions ouvertes\n- Suites à donner\n"
        ).encode()
        add_document(
            io.BytesIO(notes),
            f"compte-rendu-temps-{number}.txt",
            meeting=meeting,
            tags=[*tags, "Compte-rendu"],
            title=f"Compte-rendu – {title}",
        )
        documents += 2
    add_document(
        io.BytesIO(make_pdf("Programme de la session nationale", [s[2][:90] for s in SESSIONS])),
        "programme-session-nationale-2020.pdf",
        tags=["Programme"],
        title="Programme de la semaine",
    )
    add_document(
        io.BytesIO("Assemblée locale;Participant·es\nExemple A;3\nExemple B;5\n".encode()),
        "participation-par-structure.csv",
        tags=["Bilan 2020"],
        title="Participation par type de structure (exemple)",
    )
    add_document(
        io.BytesIO(make_png()),
        "bandeau-egm.png",
        tags=["Communication"],
        title="Bandeau de la session nationale",
    )
    return len(SESSIONS), documents + 3
