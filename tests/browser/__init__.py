"""Browser tests: a real ``portal run`` driven by Debian's Chromium through Playwright.

A package (rather than a plain folder) so that its ``conftest`` does not shadow the suite's
top-level ``conftest`` module, which test modules import by name.
"""
