"""Brute force that fits one shared password (issue 4; SPEC §4, limits in portal/ratelimit.py).

Everyone shares one password, so a single client may only guess slowly: 10 wrong tries a
minute, 30 an hour, counted per client address (an IPv6 client by its /64) on ``POST /access``
and on ``POST /login``, plus 20 wrong passwords an hour per facilitator account on ``/login``
whatever the addresses they come from. These tests go beyond ``tests/test_ratelimit.py``:

* time travels (``time.time``, which the limit store and its strategy read, is moved forward)
  so the hourly ceilings are checked without waiting;
* every argon2 call is counted, to prove a refused try costs the server no hash, even when the
  tries arrive all at once;
* other forwarding headers, more IPv6 spellings, IPv4 clients seen through a dual-stack socket;
* people already inside, on the attacker's own address (one venue behind one NAT), keep working.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import argon2
import pytest
from conftest import (
    ACCOUNT_PASSWORD,
    ADMIN_EMAIL,
    CSRF_PATTERN,
    FACILITATOR_EMAIL,
    PDF_BYTES,
    SHARED_PASSWORD,
)
from flask import Flask
from flask.testing import FlaskClient

from portal import create_app
from portal.extensions import db
from portal.ratelimit import limit_store

WRONG = "not-the-password"
PER_MINUTE = 10
PER_HOUR = 30
PER_ACCOUNT = 20
ATTACKER = "198.51.100.66"
BYSTANDER = "198.51.100.77"
PATHS = ["/access", "/login"]


# --- a clock that travels, and a counter of password hashes ---------------------------------------


class Clock:
    """A frozen ``time.time`` that moves only when told: no test depends on machine speed."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def travel(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Travel in time as the rate-limit store and its strategy see it."""
    start = time.time()
    frozen = Clock(start)
    monkeypatch.setattr(time, "time", frozen)
    # Make sure the store really reads this clock, or the hourly tests would prove nothing.
    with app.app_context():
        storage = limit_store().storage
        assert storage.acquire_entry("clock-probe", 1, 60)
        assert not storage.acquire_entry("clock-probe", 1, 60)
        frozen.travel(61)
        assert storage.acquire_entry("clock-probe", 1, 60), "the limit store ignores time.time"
        storage.clear("clock-probe")
    frozen.now = start + 120  # past the probe's window, before any test try
    return frozen


@dataclass
class Hashes:
    """Every argon2 hash or verification the server runs."""

    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> None:
        with self.lock:
            self.calls += 1


@pytest.fixture
def hashes(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Hashes:
    """Count argon2 work from now on (the accounts of the ``app`` fixture are already made)."""
    counter = Hashes()
    original_verify = argon2.PasswordHasher.verify
    original_hash = argon2.PasswordHasher.hash

    def verify(self, stored, password):  # type: ignore[no-untyped-def]
        counter.count()
        return original_verify(self, stored, password)

    def hash_(self, password, **kwargs):  # type: ignore[no-untyped-def]
        counter.count()
        return original_hash(self, password, **kwargs)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", verify)
    monkeypatch.setattr(argon2.PasswordHasher, "hash", hash_)
    return counter


# --- requests ------------------------------------------------------------------------------------


def token_for(client: FlaskClient, path: str, address: str, headers=None) -> str:
    page = client.get(path, environ_base={"REMOTE_ADDR": address}, headers=headers or {})
    assert page.status_code == 200, page.status_code
    return CSRF_PATTERN.search(page.get_data(as_text=True)).group(1)


def attempt(
    client: FlaskClient,
    path: str,
    address: str,
    password: str = WRONG,
    email: str = FACILITATOR_EMAIL,
    headers=None,
    token: str | None = None,
):
    """One try at ``path`` from ``address`` with a valid CSRF token."""
    data = {"password": password, "csrf_token": token or token_for(client, path, address, headers)}
    if path == "/login":
        data["email"] = email
    return client.post(
        path, data=data, environ_base={"REMOTE_ADDR": address}, headers=headers or {}
    )


def right_password(path: str) -> str:
    return SHARED_PASSWORD if path == "/access" else ACCOUNT_PASSWORD


def burst(client: FlaskClient, path: str, address: str, count: int, **kwargs) -> list[int]:
    token = token_for(client, path, address, kwargs.get("headers"))
    return [attempt(client, path, address, token=token, **kwargs).status_code for _ in range(count)]


def retry_after(response) -> int:
    assert response.status_code == 429, response.status_code
    return int(response.headers["Retry-After"])


@pytest.fixture
def proxied_app(app_config: dict, app: Flask) -> Iterator[Flask]:
    """The same portal behind one trusted reverse proxy (PORTAL_PROXY_FIX=1)."""
    proxied = create_app({**app_config, "PROXY_FIX": 1})
    yield proxied
    with proxied.app_context():
        db.session.remove()
        db.engine.dispose()


# --- one client, one minute -----------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_throttled_client_keeps_getting_429_while_it_continues(client, clock, hashes, path):
    assert burst(client, path, ATTACKER, PER_MINUTE) == [401] * PER_MINUTE
    assert hashes.calls == PER_MINUTE
    token = token_for(client, path, ATTACKER)
    for second in range(0, 50, 2):
        clock.travel(2)
        response = attempt(client, path, ATTACKER, token=token)
        # Refused tries are not counted, so the wait shrinks as time passes, never grows.
        assert 0 < retry_after(response) <= 60 - second, (second, response.headers["Retry-After"])
    assert hashes.calls == PER_MINUTE, "a refused try ran the password hash"


@pytest.mark.parametrize("path", PATHS)
def test_retry_after_is_honest(client, clock, path):
    burst(client, path, ATTACKER, PER_MINUTE)
    wait = retry_after(attempt(client, path, ATTACKER))
    clock.travel(wait - 3)
    assert attempt(client, path, ATTACKER).status_code == 429
    clock.travel(4)
    assert attempt(client, path, ATTACKER).status_code == 401


@pytest.mark.parametrize("path", PATHS)
def test_the_eleventh_try_runs_no_hash_even_with_the_right_password(client, hashes, path):
    assert burst(client, path, ATTACKER, PER_MINUTE) == [401] * PER_MINUTE
    before = hashes.calls
    assert attempt(client, path, ATTACKER).status_code == 429
    assert attempt(client, path, ATTACKER, right_password(path)).status_code == 429
    assert hashes.calls == before


@pytest.mark.parametrize("path", PATHS)
def test_a_burst_of_simultaneous_tries_gets_no_more_than_ten_hashes(app, monkeypatch, path):
    """Tries sent all at once must be counted before the hash runs, not after it answered.

    Every try that reaches the password check is held there (half a second at most) until
    all the others either reached it too or were refused, so the ones let through overlap
    as in a real burst; a portal that takes one client's tries one at a time passes too.
    """
    senders = PER_MINUTE + 4
    entered, refused = [0], [0]
    inside = threading.local()
    condition = threading.Condition()
    original = argon2.PasswordHasher.verify
    statuses: list[int] = []

    def held_verify(self, stored, password):  # type: ignore[no-untyped-def]
        inside.entered = True
        with condition:
            entered[0] += 1
            condition.notify_all()
            condition.wait_for(lambda: entered[0] + refused[0] >= senders, timeout=0.5)
        return original(self, stored, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", held_verify)
    clients = [app.test_client() for _ in range(senders)]
    tokens = [token_for(c, path, ATTACKER) for c in clients]
    start = threading.Barrier(senders)

    def send(index: int) -> None:
        inside.entered = False
        status = None
        try:
            start.wait(timeout=10)
            status = attempt(clients[index], path, ATTACKER, token=tokens[index]).status_code
        finally:
            with condition:
                statuses.append(status)
                if not inside.entered:
                    refused[0] += 1
                condition.notify_all()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(statuses) == senders
    assert entered[0] <= PER_MINUTE, (
        f"{entered[0]} simultaneous wrong tries from one client reached the password check"
        f" (limit {PER_MINUTE}); statuses {sorted(statuses)}"
    )
    assert sorted(statuses) == [401] * PER_MINUTE + [429] * (senders - PER_MINUTE)


# --- one client, one hour -------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_hourly_ceiling_holds_when_tries_are_spread_beyond_a_minute(client, clock, hashes, path):
    # On /login every try names another (unknown) account: only the client's limits apply.
    emails = iter(f"guess{n}@example.org" for n in range(1000))

    def wrong(count: int) -> list[int]:
        return [
            attempt(client, path, ATTACKER, email=next(emails)).status_code for _ in range(count)
        ]

    for _minute in range(PER_HOUR // PER_MINUTE):
        assert wrong(PER_MINUTE) == [401] * PER_MINUTE
        assert retry_after(attempt(client, path, ATTACKER, email=next(emails))) <= 60
        clock.travel(61)
    hashed = hashes.calls
    assert hashed == PER_HOUR
    # 30 wrong tries this hour: a new minute no longer opens the door...
    response = attempt(client, path, ATTACKER, email=next(emails))
    assert retry_after(response) > 60, "the hourly ceiling did not slow the attacker further"
    for _ in range(5):
        clock.travel(10 * 60)
        assert wrong(1) == [429]
        assert attempt(client, path, ATTACKER, right_password(path)).status_code == 429
    assert hashes.calls == hashed
    # ...until the first tries leave the hour: then the window moves on, no permanent lockout.
    clock.travel(3600 - 3 * 61 - 50 * 60 + 5)
    assert wrong(1) == [401]


# --- what a client is -----------------------------------------------------------------------------


SPOOFING_HEADERS = [
    "X-Forwarded-For",
    "X-Real-IP",
    "Forwarded",
    "X-Client-IP",
    "True-Client-IP",
    "CF-Connecting-IP",
    "X-Cluster-Client-IP",
]


def spoofed(header: str, n: int) -> dict[str, str]:
    value = f"203.0.113.{n}"
    return {header: f"for={value}" if header == "Forwarded" else value}


@pytest.mark.parametrize("header", SPOOFING_HEADERS)
@pytest.mark.parametrize("path", PATHS)
def test_forwarding_headers_from_the_client_do_not_reset_the_count(client, path, header):
    statuses = [
        attempt(client, path, ATTACKER, headers=spoofed(header, n)).status_code
        for n in range(PER_MINUTE)
    ]
    assert statuses == [401] * PER_MINUTE
    response = attempt(client, path, ATTACKER, headers=spoofed(header, 200))
    assert response.status_code == 429, f"{header} reset the counter of {path}"


@pytest.mark.parametrize("path", PATHS)
def test_trusted_proxy_groups_forwarded_ipv6_clients_by_64(proxied_app, path):
    client = proxied_app.test_client()
    proxy = "10.0.0.1"
    for n in range(PER_MINUTE):
        headers = {"X-Forwarded-For": f"2001:db8:5:6:{n:x}::{n + 1:x}"}
        assert attempt(client, path, proxy, headers=headers).status_code == 401
    same_64 = {"X-Forwarded-For": "2001:db8:5:6:ffff:ffff:ffff:ffff"}
    assert attempt(client, path, proxy, headers=same_64).status_code == 429
    other_64 = {"X-Forwarded-For": "2001:db8:5:7::1"}
    assert attempt(client, path, proxy, right_password(path), headers=other_64).status_code == 303


IPV6_SPELLINGS_OF_ONE_64 = [
    "2001:db8:aa:bb::1",
    "2001:DB8:AA:BB::2",
    "2001:0db8:00aa:00bb:0000:0000:0000:0003",
    "2001:db8:aa:bb:1234:5678:9abc:def0",
    "2001:db8:aa:bb:ffff::",
]


@pytest.mark.parametrize("path", PATHS)
def test_every_spelling_and_interface_id_of_one_ipv6_64_shares_a_counter(client, path):
    statuses = [
        attempt(
            client, path, IPV6_SPELLINGS_OF_ONE_64[n % len(IPV6_SPELLINGS_OF_ONE_64)]
        ).status_code
        for n in range(PER_MINUTE)
    ]
    assert statuses == [401] * PER_MINUTE
    assert attempt(client, path, "2001:db8:aa:bb:dead:beef:0:1").status_code == 429
    # The neighbouring /64 (another household of the same provider) is not punished.
    assert attempt(client, path, "2001:db8:aa:bc::1", right_password(path)).status_code == 303


@pytest.mark.parametrize("path", PATHS)
def test_ipv4_clients_seen_through_a_dual_stack_socket_are_counted_one_by_one(client, path):
    """``::ffff:a.b.c.d`` is the IPv4 client a.b.c.d, not a member of one shared /64."""
    assert burst(client, path, f"::ffff:{ATTACKER}", PER_MINUTE) == [401] * PER_MINUTE
    assert attempt(client, path, ATTACKER).status_code == 429  # the same client, plainly written
    # Every other IPv4 client of the world is still free to type the right password.
    assert attempt(client, path, f"::ffff:{BYSTANDER}", right_password(path)).status_code == 303


# --- people who are not the attacker --------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_people_already_inside_on_the_attackers_address_keep_working(
    app, client, make_meeting, make_document, path
):
    """One venue, one NAT: a participant and a facilitator share the attacker's address."""
    meeting = make_meeting("Plénière")
    document = make_document("programme.pdf", meeting=meeting)
    participant, facilitator = app.test_client(), app.test_client()
    assert attempt(participant, "/access", ATTACKER, SHARED_PASSWORD).status_code == 303
    assert attempt(facilitator, "/login", ATTACKER, ACCOUNT_PASSWORD).status_code == 303

    burst(client, path, ATTACKER, PER_MINUTE + 5)
    assert attempt(client, path, ATTACKER).status_code == 429

    here = {"environ_base": {"REMOTE_ADDR": ATTACKER}}
    assert participant.get("/", **here).status_code == 200
    assert participant.get(f"/sessions/{meeting.slug}", **here).status_code == 200
    download = participant.get(f"/documents/{document.id}/{document.original_name}", **here)
    assert download.status_code == 200
    assert download.data == PDF_BYTES
    download.close()
    assert facilitator.get("/manage", **here).status_code == 200
    token = token_for(facilitator, "/manage/upload", ATTACKER)
    edited = facilitator.post(
        f"/manage/sessions/{meeting.id}/edit",
        data={
            "csrf_token": token,
            "title": "Plénière (modifiée)",
            "starts_at": "2020-11-21T10:00",
            "ends_at": "2020-11-21T12:00",
        },
        **here,
    )
    assert edited.status_code == 303


@pytest.mark.parametrize("path", PATHS)
def test_right_password_from_another_address_gets_in_during_a_distributed_attack(app, client, path):
    """An attacker rotating through a whole IPv6 /64 does not close the door to others."""
    for n in range(3 * PER_MINUTE):
        attempt(client, path, f"2001:db8:66:66::{n + 1:x}")
    assert attempt(client, path, "2001:db8:66:66::ffff").status_code == 429
    newcomer = app.test_client()
    assert attempt(newcomer, path, BYSTANDER, right_password(path)).status_code == 303
    landing = "/" if path == "/access" else "/manage"
    assert newcomer.get(landing, environ_base={"REMOTE_ADDR": BYSTANDER}).status_code == 200


# --- one facilitator account, many addresses ------------------------------------------------------


def distributed_wrong_logins(client: FlaskClient, clock: Clock, emails: list[str]) -> list[int]:
    """One wrong password per address, one every two minutes (no client limit ever trips)."""
    statuses = []
    for n, email in enumerate(emails):
        statuses.append(attempt(client, "/login", f"192.0.2.{n + 1}", email=email).status_code)
        clock.travel(120)
    return statuses


def test_account_ceiling_holds_across_addresses_and_spares_other_accounts(
    app, client, clock, hashes
):
    statuses = distributed_wrong_logins(client, clock, [FACILITATOR_EMAIL] * PER_ACCOUNT)
    assert statuses == [401] * PER_ACCOUNT
    hashed = hashes.calls

    owner = app.test_client()
    response = attempt(owner, "/login", "203.0.113.200", ACCOUNT_PASSWORD)
    assert response.status_code == 429, "the account's hourly ceiling did not hold"
    assert int(response.headers["Retry-After"]) > 60
    assert hashes.calls == hashed, "a try beyond the account's ceiling ran the password hash"
    assert owner.get("/manage").status_code == 302

    # Another facilitator logs in, from a fresh address and from one the attacker used.
    for address in ("203.0.113.201", "192.0.2.1"):
        colleague = app.test_client()
        signed_in = attempt(colleague, "/login", address, ACCOUNT_PASSWORD, email=ADMIN_EMAIL)
        assert signed_in.status_code == 303, address
        assert colleague.get("/manage").status_code == 200
    # The participants' gate is not tied to facilitator accounts.
    assert (
        attempt(app.test_client(), "/access", "203.0.113.202", SHARED_PASSWORD).status_code == 303
    )


def test_account_ceiling_is_not_a_permanent_lockout(app, client, clock):
    distributed_wrong_logins(client, clock, [FACILITATOR_EMAIL] * PER_ACCOUNT)
    owner = app.test_client()
    assert attempt(owner, "/login", "203.0.113.200", ACCOUNT_PASSWORD).status_code == 429
    # The first wrong tries leave the hour: the owner gets in again.
    clock.travel(3600 - PER_ACCOUNT * 120 + 5)
    assert attempt(owner, "/login", "203.0.113.200", ACCOUNT_PASSWORD).status_code == 303


def test_account_ceiling_counts_every_spelling_of_the_e_mail(app, client, clock):
    local, _, domain = FACILITATOR_EMAIL.partition("@")
    spellings = [
        FACILITATOR_EMAIL.upper(),
        f"  {FACILITATOR_EMAIL}  ",
        f"{local.capitalize()}@{domain.upper()}",
        f"\t{FACILITATOR_EMAIL.title()}",
    ]
    emails = [spellings[n % len(spellings)] for n in range(PER_ACCOUNT)]
    assert distributed_wrong_logins(client, clock, emails) == [401] * PER_ACCOUNT
    owner = app.test_client()
    assert attempt(owner, "/login", "203.0.113.200", ACCOUNT_PASSWORD).status_code == 429


def test_wrong_tries_against_unknown_accounts_cost_the_same_and_are_counted(client, hashes):
    """An unknown e-mail still runs one hash (no timing oracle) and counts for the client."""
    statuses = [
        attempt(client, "/login", ATTACKER, email=f"nobody{n}@example.org").status_code
        for n in range(PER_MINUTE)
    ]
    assert statuses == [401] * PER_MINUTE
    assert hashes.calls == PER_MINUTE
    assert attempt(client, "/login", ATTACKER, email="nobody@example.org").status_code == 429
    assert hashes.calls == PER_MINUTE
