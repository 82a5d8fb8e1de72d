"""Take phone and desktop screenshots of the portal's main pages into docs/screenshots/.

Usage (from the repository root, with the ``test`` extra installed)::

    python docs/screenshots.py

It starts ``portal run`` on a fresh temporary instance filled by ``portal demo``, drives
Debian's Chromium (``/usr/bin/chromium``, never a downloaded browser) with Playwright, and
overwrites the PNG files. Viewport-sized captures keep the files small.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

OUT = Path(__file__).resolve().parent / "screenshots"
PORTAL = Path(sys.executable).parent / "portal"
DEVICES = {
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
    "desktop": {"viewport": {"width": 1280, "height": 860}},
}


#: Files dropped on the upload page for its screenshot: two accepted, one refused.
UPLOADS = [
    {
        "name": "Synthese-atelier.pdf",
        "mimeType": "application/pdf",
        "buffer": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n",
    },
    {"name": "Notes.txt", "mimeType": "text/plain", "buffer": "Notes de l’atelier\n".encode()},
    {"name": "outil.exe", "mimeType": "application/octet-stream", "buffer": b"MZ\x90"},
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _credential(lines: list[str], label: str) -> str:
    for line in lines:
        if match := re.match(rf"^{re.escape(label)}: (\S+)$", line):
            return match.group(1)
    raise SystemExit(f"portal run did not print {label!r}")


def _wait(url: str, process: subprocess.Popen) -> None:
    for _ in range(100):
        if process.poll() is not None:
            raise SystemExit("portal run exited early")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):  # noqa: S310 - local
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("portal run did not answer")


def _shoot(browser, base: str, password: str, email: str, admin_password: str) -> None:  # type: ignore[no-untyped-def]
    for device, options in DEVICES.items():
        context = browser.new_context(base_url=base, locale="fr-FR", **options)
        page = context.new_page()
        page.goto("/access")
        page.screenshot(path=OUT / f"{device}-gate.png")
        page.fill("input[name=password]", password)
        page.click("main button[type=submit]")
        page.wait_for_url(base + "/")
        page.screenshot(path=OUT / f"{device}-programme.png")
        page.goto("/?q=compte&tag=bilan-2020")
        page.screenshot(path=OUT / f"{device}-filtered.png")
        page.click(".meeting h3 a")
        page.wait_for_load_state()
        page.screenshot(path=OUT / f"{device}-session.png")
        page.goto("/")
        page.click(".document:has-text('Programme de la semaine') a.preview")
        page.wait_for_timeout(1500)  # the browser's PDF viewer draws after the load event
        page.wait_for_load_state()
        page.screenshot(path=OUT / f"{device}-preview.png")
        context.close()
        context = browser.new_context(base_url=base, locale="fr-FR", **options)
        page = context.new_page()
        page.goto("/login")
        page.fill("input[name=email]", email)
        page.fill("input[name=password]", admin_password)
        page.click("main button[type=submit]")
        page.wait_for_url(lambda url: "/login" not in url)
        page.screenshot(path=OUT / f"{device}-manage.png")
        page.goto("/manage/upload")
        page.set_input_files("#files", files=UPLOADS)
        page.click("main form button[type=submit]")
        finished = page.locator(".upload-item.accepted, .upload-item.rejected")
        finished.nth(len(UPLOADS) - 1).wait_for()
        page.screenshot(path=OUT / f"{device}-upload.png", full_page=True)
        context.close()


def main() -> None:
    """Start a demo portal, take the screenshots, stop the portal."""
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as root:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
        env.update(PORTAL_INSTANCE_DIR=f"{root}/instance", PORTAL_STORAGE=f"{root}/uploads")
        demo = [str(PORTAL), "demo"]
        subprocess.run(demo, cwd=root, env=env, check=True, capture_output=True)  # noqa: S603
        port = _free_port()
        server = subprocess.Popen(  # noqa: S603 - our own console script
            [str(PORTAL), "run", "--port", str(port), "--workers", "1"],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            lines = []
            assert server.stdout is not None  # noqa: S101 - piped above
            while len(lines) < 200:
                line = server.stdout.readline()
                if not line:
                    break
                lines.append(line.rstrip("\n"))
                if line.startswith("admin password: "):
                    break
            _wait(base, server)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"]
                )
                _shoot(
                    browser,
                    base,
                    _credential(lines, "shared password"),
                    _credential(lines, "admin e-mail"),
                    _credential(lines, "admin password"),
                )
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=10)
    for path in sorted(OUT.glob("*.png")):
        print(f"{path.relative_to(OUT.parent.parent)}  {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
