"""Sending one delivery: resolve the receiver's host, refuse addresses it may not reach, POST the signed
payload to the address it resolved (pinned: no second look-up a DNS rebinding could answer differently),
and record what happened. Run by a worker (`tradeguard.deliver_webhooks`, one task per commit's events, and
`tradeguard.deliver_webhook` for a retry), never in a web request.

A receiver's fault (refused, timed out, an error status, a redirect) is recorded on the delivery and
retried on the schedule of `rules.retry_delay`; it never raises out of `attempt`. Nor does a fault of ours
in one delivery's attempt: it is that delivery's failed attempt, not its batch's.
"""

from __future__ import annotations

import http.client
import io
import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from shared.core.crypto import SecretBox, SecretUnreadable
from shared.core.db import DbSession, utcnow
from shared.core.executors import Inline
from shared.models import DeliveryStatus, Webhook, WebhookDelivery
from shared.notifications import rules
from shared.notifications.rules import Target

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger(__name__)

# host, port -> the addresses it resolves to (textual IPs). `resolve` unless given (tests give another).
Resolver = Callable[[str, int], Sequence[str]]

# How much of a receiver's answer is read (for last_error): the rest is never downloaded.
RESPONSE_EXCERPT_BYTES = 512
# A retry message may run a little before its row says it is due (the clocks of the worker that
# scheduled it and the one that runs it differ): this much early still counts as due.
EARLY_TOLERANCE = timedelta(seconds=2)


class RefusedDestination(Exception):
    """The URL's host does not resolve, or resolves to an address webhooks may not reach. The message
    says which, for the owner (422 at creation) or the delivery's last_error."""


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the resolver's order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def allowed_addresses(target: Target, *, allow_private: bool, resolver: Resolver | None = None) -> list[str]:
    """The addresses to connect to for `target`, all of them allowed; RefusedDestination otherwise. One
    refused address refuses the host: a name that mixes a public address with an internal one is the
    shape of an attack, and which one a client picks is not ours to trust."""
    try:
        addresses = list((resolver or resolve)(target.host, target.port))
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError; UnicodeError: IDNA
        raise RefusedDestination(f"host {target.host} does not resolve ({exc})") from exc
    if not addresses:
        raise RefusedDestination(f"host {target.host} does not resolve")
    for address in addresses:
        reason = rules.refusal_reason(address, allow_private)
        if reason is not None:
            raise RefusedDestination(
                f"host {target.host} resolves to {address}, {reason}: webhooks go to public addresses only"
            )
    return addresses


# --- the POST ---------------------------------------------------------------------------------------


class _Deadline:
    """The end of one attempt. A socket's timeout bounds each of its operations, not their sum: a
    receiver that drips its answer a byte at a time keeps every read inside it for as long as it likes
    (past the attempt's lease: another worker would POST the delivery again meanwhile). So each network
    step's timeout is its own (`step`) or what is left of the attempt, whichever is less."""

    def __init__(self, seconds: float, step: float):
        self.seconds = seconds
        self.step = step
        self._at = time.monotonic() + seconds

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self._at

    def timeout(self) -> float:
        """The next network step's timeout; TimeoutError when the attempt has no time left."""
        left = self._at - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no time left of the attempt's {self.seconds:g} s")
        return min(self.step, left)


class _DeadlineReader(io.RawIOBase):
    """The answer's bytes from `raw` (the socket's reader), each read's timeout set by the deadline."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, deadline: _Deadline):
        super().__init__()
        self._raw = raw
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        self._sock.settimeout(self._deadline.timeout())
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()  # lets the socket close (a reader of it keeps it open)
        super().close()


def _answer_class(deadline: _Deadline) -> type[http.client.HTTPResponse]:
    """The class http.client reads the answer with (status line, headers, body): through a
    _DeadlineReader."""

    class DeadlineResponse(http.client.HTTPResponse):
        def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any):
            super().__init__(sock, *args, **kwargs)
            # Nothing is read yet: the socket's reader moves under one that keeps to the deadline.
            self.fp = io.BufferedReader(_DeadlineReader(self.fp.detach(), sock, deadline))

    return DeadlineResponse


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to `address`, speaking to it as `host` (the Host header is the host's), every
    step of it within `deadline`."""

    def __init__(self, host: str, port: int, address: str, deadline: _Deadline):
        super().__init__(host, port, timeout=deadline.step)
        self._address = address
        self._deadline = deadline
        self.response_class = _answer_class(deadline)

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self._deadline.timeout())


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to `address`, with the host's name in SNI and its certificate checked against that name,
    every step of it within `deadline`."""

    def __init__(self, host: str, port: int, address: str, deadline: _Deadline, context: ssl.SSLContext):
        super().__init__(host, port, timeout=deadline.step, context=context)
        self._address = address
        self._deadline = deadline
        self._tls = context
        self.response_class = _answer_class(deadline)

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self._deadline.timeout())
        try:
            raw.settimeout(self._deadline.timeout())  # the handshake's whole (ssl counts it so)
            self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


@dataclass(frozen=True)
class Answer:
    """What one POST came to: the receiver's status code when it answered, and an error unless 2xx."""

    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.error is None


def post(
    target: Target,
    addresses: Sequence[str],
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    within: float,
) -> Answer:
    """POST `body` to `target` at the first of `addresses` that accepts a connection. Each network step
    (connect, TLS, send, each read of the answer) may take `timeout` seconds, and all of them, over
    every address, `within` seconds; redirects are not followed (a 3xx is a failed attempt); at most
    RESPONSE_EXCERPT_BYTES of the answer are read."""
    deadline = _Deadline(within, timeout)
    out_of_time = Answer(None, f"no complete answer within {within:g} s")
    connection_error: str | None = None
    for address in addresses:
        connection: http.client.HTTPConnection
        if target.scheme == "https":
            connection = _PinnedHTTPSConnection(
                target.host, target.port, address, deadline, ssl.create_default_context()
            )
        else:
            connection = _PinnedHTTPConnection(target.host, target.port, address, deadline)
        try:
            try:
                connection.connect()
            except (OSError, ssl.SSLError) as exc:
                if deadline.passed:
                    return out_of_time
                # Not answered at this address: the next one may (a host with IPv6 and IPv4, say).
                connection_error = f"could not connect to {address}: {type(exc).__name__}: {exc}"
                continue
            try:
                if connection.sock is not None:  # connected: the send's timeout is what is left
                    connection.sock.settimeout(deadline.timeout())
                connection.request("POST", target.path, body=body, headers=headers)
                response = connection.getresponse()
                excerpt = response.read(RESPONSE_EXCERPT_BYTES)
            except TimeoutError:
                return out_of_time if deadline.passed else Answer(None, f"no answer within {timeout:g} s")
            except (OSError, http.client.HTTPException) as exc:
                return Answer(None, f"{type(exc).__name__}: {exc}")
            status = response.status
            if 200 <= status < 300:
                return Answer(status, None)
            if 300 <= status < 400:
                location = response.getheader("Location") or "no Location"
                return Answer(status, f"HTTP {status}: redirects are not followed ({location})")
            text = excerpt.decode("utf-8", errors="replace")
            return Answer(status, f"HTTP {status}: {text}" if text.strip() else f"HTTP {status}")
        finally:
            connection.close()
    return Answer(None, connection_error or "no address to connect to")


# --- one attempt, recorded ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What `attempt` did: the delivery's status after it (None: nothing to do: delivered or given up
    already, not due yet, or claimed by another worker), and how long to wait before the next attempt
    when there is one."""

    status: DeliveryStatus | None
    retry_in: float | None = None


@dataclass(frozen=True)
class DeliverySettings:
    allow_private: bool = False
    timeout_seconds: float = 5.0
    retry_scale: float = 1.0

    @property
    def attempt_seconds(self) -> float:
        """How long one attempt's network steps (connect, send, the whole answer) may take together: as
        long as three steps each within its timeout."""
        return 3 * self.timeout_seconds

    @property
    def lease(self) -> timedelta:
        """How long a claimed attempt keeps others off the delivery: longer than any attempt can take
        (a look-up, then its network steps within attempt_seconds), so two never POST at once."""
        return timedelta(seconds=4 * self.timeout_seconds + 30)


def attempt(
    session: DbSession,
    box: SecretBox,
    delivery_id: str,
    settings: DeliverySettings,
    *,
    resolver: Resolver | None = None,
    now: Callable[[], datetime] = utcnow,
) -> Outcome:
    """Make the delivery's next attempt if it is due, and record it (`attempt_many` for one)."""
    return attempt_many(session, box, [delivery_id], settings, resolver=resolver, now=now)[delivery_id]


def attempt_many(
    session: DbSession,
    box: SecretBox,
    delivery_ids: Sequence[str],
    settings: DeliverySettings,
    *,
    resolver: Resolver | None = None,
    now: Callable[[], datetime] = utcnow,
    executor: Executor | None = None,
) -> dict[str, Outcome]:
    """Make each delivery's next attempt if it is due, and record it; the outcome by delivery id.

    Safe to run twice, also at once: the attempts are claimed by one conditional UPDATE (committed
    before any POST), so only one copy sends each, and a delivered or failed delivery is never sent
    again. The POSTs go out on `executor` (in line without one), each webhook's in order and different
    webhooks' at once; their results are recorded in one transaction. One task per commit's events
    rather than one per event: with 100 alerts raised at once, a task per delivery made the owners wait
    seconds for `alert.pending` (bench/guards.py)."""
    outcomes = {delivery_id: Outcome(None) for delivery_id in delivery_ids}
    claimed = _claim(session, list(outcomes), now(), settings.lease)
    if not claimed:
        return outcomes
    deliveries = [
        _Claimed(row.id, row.delivery_id, row.event, row.payload, row.webhook_id)
        for row in session.execute(
            sa.select(
                WebhookDelivery.id,
                WebhookDelivery.delivery_id,
                WebhookDelivery.event,
                WebhookDelivery.payload,
                WebhookDelivery.webhook_id,
            )
            .where(WebhookDelivery.id.in_(claimed))
            .order_by(WebhookDelivery.id)
        )
    ]
    webhooks = {
        row.id: row
        for row in session.execute(
            sa.select(Webhook.id, Webhook.url, Webhook.secret_encrypted, Webhook.deleted_at).where(
                Webhook.id.in_({d.webhook_id for d in deliveries})
            )
        )
    }
    session.rollback()  # nothing held open while receivers answer
    results: dict[int, Answer] = {}
    # Each webhook's deliveries one after the other, in the order they were made (an owner hears of
    # the alert before the halt it led to); different webhooks at once.
    by_webhook: dict[int, list[_Claimed]] = {}
    for delivery in deliveries:
        webhook = webhooks.get(delivery.webhook_id)
        if webhook is None or webhook.deleted_at is not None:
            results[delivery.id] = Answer(None, _DELETED)
        else:
            by_webhook.setdefault(webhook.id, []).append(delivery)

    def post_in_order(webhook: Any, in_order: list[_Claimed]) -> list[tuple[int, Answer]]:
        secret: str | SecretUnreadable
        try:
            secret = box.decrypt(webhook.secret_encrypted)
        except SecretUnreadable as exc:  # the operator's to fix (the key list); retried meanwhile
            secret = exc
        answers = []
        for d in in_order:
            try:
                answer = _send(d, webhook.url, secret, settings, resolver or resolve)
            except Exception as exc:
                # A fault of ours, not the receiver's: this delivery's attempt failed (retried on the
                # schedule). Raised, it would lose the results of the batch's other POSTs, which went
                # out: they would be sent again.
                log.exception("webhook delivery %s: its attempt failed unexpectedly", d.delivery_id)
                answer = _unexpected(exc)
            answers.append((d.id, answer))
        return answers

    runner = executor or Inline()
    submitted = [
        (rows, runner.submit(post_in_order, webhooks[webhook_id], rows))
        for webhook_id, rows in by_webhook.items()
    ]
    for rows, future in submitted:
        try:
            results.update(future.result())
        except Exception as exc:  # before its first POST: its secret could not be read, unexpectedly
            log.exception("webhook %s: its deliveries' attempts failed unexpectedly", rows[0].webhook_id)
            results.update((d.id, _unexpected(exc)) for d in rows)

    at = now()
    for delivery in deliveries:
        answer, attempts = results[delivery.id], claimed[delivery.id]
        outcome, values = _recorded(delivery.delivery_id, answer, attempts, settings, at)
        _finish(session, delivery.id, attempts, **values)
        outcomes[delivery.delivery_id] = outcome
    session.commit()
    return outcomes


_DELETED = "the webhook was deleted"


def _unexpected(exc: Exception) -> Answer:
    """The failed answer of an attempt that raised what no receiver's fault raises: a fault of ours."""
    return Answer(None, f"failed unexpectedly: {type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class _Claimed:
    """A claimed delivery, as read before the POSTs (plain values: the POSTs run on other threads)."""

    id: int
    delivery_id: str
    event: str
    payload: dict[str, Any]
    webhook_id: int


def _recorded(
    delivery_id: str, answer: Answer, attempts: int, settings: DeliverySettings, at: datetime
) -> tuple[Outcome, dict[str, Any]]:
    """What an attempt's answer makes of its delivery: the outcome, and the row's new values."""
    if answer.delivered:
        return Outcome(DeliveryStatus.DELIVERED), {
            "status": DeliveryStatus.DELIVERED,
            "status_code": answer.status_code,
            "last_error": None,
            "delivered_at": at,
        }
    if answer.error == _DELETED:
        return Outcome(DeliveryStatus.FAILED), {"status": DeliveryStatus.FAILED, "last_error": _DELETED}
    error = rules.error_text(answer.error or "failed")
    delay = rules.retry_delay(attempts, settings.retry_scale)  # None after the last attempt
    if delay is None:
        log.warning("webhook delivery %s failed for good after %d attempts: %s", delivery_id, attempts, error)
        return Outcome(DeliveryStatus.FAILED), {
            "status": DeliveryStatus.FAILED,
            "status_code": answer.status_code,
            "last_error": error,
        }
    return Outcome(DeliveryStatus.PENDING, retry_in=delay), {
        "status": DeliveryStatus.PENDING,
        "status_code": answer.status_code,
        "last_error": error,
        "next_attempt_at": at + timedelta(seconds=delay),
    }


def _claim(session: DbSession, delivery_ids: list[str], at: datetime, lease: timedelta) -> dict[int, int]:
    """Take these deliveries' next attempts: each claimed row's id with its attempt's number. Left out:
    those not pending, not due, or held by another worker (its claim pushed next_attempt_at past now).

    Never an attempt past rules.MAX_ATTEMPTS: a due delivery that has had them all (its last attempt's
    worker died before recording it) is failed here, saying so; claimed again, it would be sent for ever
    (the sweep finds it due every minute)."""
    due = (
        WebhookDelivery.delivery_id.in_(delivery_ids),
        WebhookDelivery.status == DeliveryStatus.PENDING,
        sa.or_(
            WebhookDelivery.next_attempt_at.is_(None),
            WebhookDelivery.next_attempt_at <= at + EARLY_TOLERANCE,
        ),
    )
    statement = (
        sa.update(WebhookDelivery)
        .where(*due, WebhookDelivery.attempts < rules.MAX_ATTEMPTS)
        .values(attempts=WebhookDelivery.attempts + 1, next_attempt_at=at + lease)
        .returning(WebhookDelivery.id, WebhookDelivery.attempts)
        .execution_options(synchronize_session=False)
    )
    rows = session.execute(statement).all()
    if len(rows) < len(set(delivery_ids)):
        # Some were not claimed (held, not due, done, or used up): only then a statement to fail the used
        # up, off the path of every delivery (an alert's webhooks wait for this commit).
        used_up = session.execute(
            sa.update(WebhookDelivery)
            .where(*due, WebhookDelivery.attempts >= rules.MAX_ATTEMPTS)
            .values(status=DeliveryStatus.FAILED, last_error=rules.ATTEMPTS_USED_UP, next_attempt_at=None)
            .returning(WebhookDelivery.delivery_id)
            .execution_options(synchronize_session=False)
        ).scalars()
        for delivery_id in used_up:
            log.warning("webhook delivery %s failed for good: %s", delivery_id, rules.ATTEMPTS_USED_UP)
    session.commit()  # the claims are visible before the POSTs go out
    return {int(row[0]): int(row[1]) for row in rows}


def _finish(session: DbSession, row_id: int, attempts: int, **values: Any) -> None:
    """Record the attempt's result (committed by the caller), if the attempt is still ours (a claim
    that outlived its lease may have been taken over; the newer attempt's result is the one to keep)."""
    if values.get("status") != DeliveryStatus.PENDING:
        values.setdefault("next_attempt_at", None)
    session.execute(
        sa.update(WebhookDelivery)
        .where(
            WebhookDelivery.id == row_id,
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.attempts == attempts,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def _send(
    delivery: _Claimed,
    url: str,
    secret: str | SecretUnreadable,
    settings: DeliverySettings,
    resolver: Resolver,
) -> Answer:
    target = rules.parse_url(url)
    if isinstance(target, str):  # stored before a rule tightened: refused now
        return Answer(None, f"the webhook's URL is refused: {target}")
    try:
        # Resolved on every attempt and checked again: a name that was public at creation may point
        # inside the network now.
        addresses = allowed_addresses(target, allow_private=settings.allow_private, resolver=resolver)
    except RefusedDestination as exc:
        return Answer(None, f"refused: {exc}")
    if isinstance(secret, SecretUnreadable):
        return Answer(None, f"not sent: {secret}")
    body = rules.body_bytes(delivery.payload)
    timestamp = int(time.time())
    headers = rules.headers(
        delivery_id=delivery.delivery_id,
        event=delivery.event,
        timestamp=timestamp,
        signature=rules.sign(secret, timestamp, body),
    )
    return post(target, addresses, body, headers, settings.timeout_seconds, settings.attempt_seconds)
