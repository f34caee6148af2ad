"""HTTP SMS providers as routes: their configuration entries, the routes built from them, and the intake of
their delivery-report callbacks (``POST /v1/providers/{name}/reports``).

Sending through a provider is the dispatcher's job (``HttpSmsRoute.send``; the provider's message id is
committed with the ``sent`` state). A report names that id: ``ProviderReportIntake.handle`` authenticates the
request (``ProviderReportReceiver``: shared secret or HMAC), then commits every report in ONE unit of work,
paired with its message by (provider, provider_id), with the message's new state and the ``provider.report``
/ ``sms.delivered`` ... events. The API answers 2xx only after that commit, so a report we could not store is
retried by the provider. A report for an id we have not committed yet (the provider can be faster than our
commit) is stored unmatched and applied when the send commits (the dispatcher calls
``apply_provider_report``).

Events added here: ``provider.report`` {provider, provider_id, status, raw_status, error_code, message_id}.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from gateway.events import utc_now
from gateway.sms.http_provider import HttpProviderConfig, HttpSmsRoute
from gateway.sms.models import MessageStatus, PartStatus
from gateway.sms.provider_reports import (
    ProviderReport,
    ProviderReportReceiver,
    ProviderReportsConfig,
    ReportError,
)
from gateway.store.base import ProviderReportRecord, Store, StoreTx

log = structlog.get_logger("sms.providers")

# Our delivery status -> (part status, final message status or None while the provider is still trying).
_OUTCOME: dict[str, tuple[PartStatus, MessageStatus | None]] = {
    "delivered": (PartStatus.DELIVERED, MessageStatus.DELIVERED),
    "undelivered": (PartStatus.UNDELIVERED, MessageStatus.UNDELIVERED),
    "failed": (PartStatus.FAILED, MessageStatus.FAILED),
    "pending": (PartStatus.DELIVERY_PENDING, None),
}


class HttpProviderEntry(HttpProviderConfig):
    """One ``sms.http_providers`` entry: how to send (HttpProviderConfig) and, optionally, how its delivery
    reports are authenticated and read (``reports``)."""

    reports: ProviderReportsConfig | None = None

    def send_config(self) -> HttpProviderConfig:
        return HttpProviderConfig.model_validate(self.model_dump(exclude={"reports"}))


def build_routes(entries: Iterable[HttpProviderEntry], **route_kwargs: Any) -> dict[str, HttpSmsRoute]:
    """HttpSmsRoute per entry, by name (close them with ``aclose``; ``route_kwargs``: e.g. a transport)."""
    return {entry.name: HttpSmsRoute(entry.send_config(), **route_kwargs) for entry in entries}


class UnknownProvider(LookupError):
    """No provider with that name accepts reports (404)."""


@dataclass(frozen=True)
class IntakeResult:
    provider_id: str
    status: str
    message_id: str | None  # None: no message with that id yet (stored, applied when the send commits)
    applied: bool  # the message's state changed

    def to_json(self) -> dict[str, Any]:
        return {
            "provider_id": self.provider_id,
            "status": self.status,
            "message_id": self.message_id,
            "applied": self.applied,
        }


def apply_provider_report(tx: StoreTx, message_id: str, record: ProviderReportRecord, now: datetime) -> bool:
    """Apply one report to its message (inside a unit): parts and message status, ``sms.<status>`` event.
    Only a ``sent`` message changes: a final one keeps its first outcome (reports can repeat or cross)."""
    message = tx.get_message(message_id)
    if message is None or message.status != MessageStatus.SENT:
        return False
    part_status, final = _OUTCOME[record.status]
    for part in message.part_list:
        tx.update_part(message_id, part.seq, status=part_status, updated_at=now)
    if final is None:
        return False
    error = None if final == MessageStatus.DELIVERED else f"provider status {record.raw_status}"
    if error and record.error_code:
        error += f" (error code {record.error_code})"
    changes: dict[str, Any] = {"status": final, "final_at": now, "updated_at": now}
    if error:
        changes.update(error_kind="permanent", error_message=error)
    tx.update_message(message_id, **changes)
    message.status = final
    tx.append_event(
        f"sms.{final}",
        message.event_data(
            provider_id=record.provider_id, provider_status=record.raw_status, error_code=record.error_code
        ),
    )
    return True


class ProviderReportIntake:
    """Authenticated delivery reports of every provider with a ``reports`` section, committed by
    (provider, provider_id). ``clock`` gives the stored times; ``unix_clock`` checks signature timestamps."""

    def __init__(
        self,
        store: Store,
        receivers: Mapping[str, ProviderReportReceiver],
        *,
        clock: Callable[[], datetime] = utc_now,
    ):
        self._store = store
        self._receivers = dict(receivers)
        self._clock = clock

    @classmethod
    def from_entries(
        cls,
        store: Store,
        entries: Iterable[HttpProviderEntry],
        *,
        clock: Callable[[], datetime] = utc_now,
        unix_clock: Callable[[], float] = time.time,
    ) -> ProviderReportIntake:
        receivers = {
            e.name: ProviderReportReceiver(e.name, e.reports, clock=unix_clock)
            for e in entries
            if e.reports is not None
        }
        return cls(store, receivers, clock=clock)

    @property
    def providers(self) -> list[str]:
        return sorted(self._receivers)

    async def handle(self, provider: str, headers: Mapping[str, str], body: bytes) -> list[IntakeResult]:
        """Authenticate, parse and commit. Raises UnknownProvider (404) or ReportError (its http_status)."""
        receiver = self._receivers.get(provider)
        if receiver is None:
            raise UnknownProvider(f"no provider named {provider!r} accepts delivery reports")
        try:
            reports = receiver.handle(headers, body)
        except ReportError as exc:
            log.warning("provider report refused", provider=provider, status=exc.http_status, error=str(exc))
            raise
        now = self._clock()
        results = await self._store.write(lambda tx: self._commit(tx, provider, reports, now))
        for result in results:
            log.info(
                "provider report",
                provider=provider,
                provider_id=result.provider_id,
                status=result.status,
                message_id=result.message_id,
                applied=result.applied,
            )
        return results

    @staticmethod
    def _commit(
        tx: StoreTx, provider: str, reports: list[ProviderReport], now: datetime
    ) -> list[IntakeResult]:
        results = []
        for report in reports:
            message = tx.message_by_provider_id(provider, report.provider_id)
            record = ProviderReportRecord(
                provider,
                report.provider_id,
                report.status,
                report.raw_status,
                report.error_code,
                now,
                message.id if message else None,
            )
            tx.insert_provider_report(record)
            applied = apply_provider_report(tx, message.id, record, now) if message else False
            tx.append_event(
                "provider.report",
                {
                    "provider": provider,
                    "provider_id": report.provider_id,
                    "status": report.status,
                    "raw_status": report.raw_status,
                    "error_code": report.error_code,
                    "message_id": message.id if message else None,
                },
            )
            results.append(IntakeResult(report.provider_id, report.status, record.message_id, applied))
        return results
