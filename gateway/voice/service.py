"""VoiceService: the lines, their calls, the store and the events (issue 5).

One task per line reads the device's events into its :class:`LineMachine` and acts on the notices; the
tasks a call needs (answer hook / IVR, recordings, playbacks, outbound dialling) run in that line's nursery
and end with the call. Event data always carries ``call_id`` and ``line``.

Events: line.state_changed, call.incoming, call.ringing (outbound), call.attempt, call.answered, call.dtmf,
call.missed, call.waiting, call.ended, playback.finished, recording.ready.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog
import trio

from gateway.events import format_time, utc_now
from gateway.numbers import to_e164_or_none
from gateway.sms.models import new_message_id
from gateway.store import voice_sql
from gateway.voice import dialer, recovery
from gateway.voice.calls import Attempt, Call, CallEnded, CallError, cancel_when
from gateway.voice.devices import DeviceUnavailable, LineDevice
from gateway.voice.line import (
    Announce,
    CallerUpdated,
    DeviceGone,
    Digit,
    FarEndGone,
    LineMachine,
    RingCounted,
    RingingStopped,
    StateChanged,
    ToneHeard,
    Waiting,
)
from gateway.voice.media import PromptCache, PromptError, RecordingInfo, RecordingWriter, frame_is_loud
from gateway.voice.settings import LineSettings, VoiceSettings

log = structlog.get_logger("voice")

EVENT_TYPES = (
    "line.state_changed",
    "call.incoming",
    "call.ringing",
    "call.attempt",
    "call.answered",
    "call.dtmf",
    "call.missed",
    "call.waiting",
    "call.ended",
    "playback.finished",
    "recording.ready",
    "recording.accessed",
)


class VoiceError(Exception):
    """A request the voice service refuses; ``code`` is the API problem code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


@dataclass
class _Line:
    settings: LineSettings
    device: LineDevice
    machine: LineMachine
    nursery: trio.Nursery | None = None
    call: Call | None = None
    signals: trio.MemorySendChannel | None = None  # progress signals to the dialer during an attempt
    playbacks: dict[str, trio.CancelScope] = field(default_factory=dict)

    @property
    def present(self) -> bool:
        return self.machine.state != "down"


class VoiceService:
    def __init__(
        self,
        store,
        bus,
        devices: dict[str, LineDevice],
        settings: VoiceSettings,
        *,
        on_answer: Callable[[Call], Awaitable[None]] | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.store, self.bus, self.settings = store, bus, settings
        self.on_answer = on_answer  # the lead points this at the IVR runtime
        self.prompts = PromptCache()
        self._http = http
        by_name = {s.name: s for s in settings.lines}
        self.lines: dict[str, _Line] = {}
        for name, device in devices.items():
            line_settings = by_name.get(name) or LineSettings(name=name, driver="usb_box")
            machine = LineMachine(name, region=settings.region, ring_gap_s=settings.ring_gap_s)
            self.lines[name] = _Line(line_settings, device, machine)
        self.calls: OrderedDict[str, Call] = OrderedDict()  # active calls and the most recent ended ones
        self.timings = dialer.DialTimings(settings.dialtone_timeout_s, settings.clear_s)

    # ================================================================================== running
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await self.store.write(lambda tx: voice_sql.end_interrupted_calls(tx, format_time(utc_now())))
        await recovery.recover_recordings(self.store)
        own_http = self._http is None and self.settings.contact_lookup_url is not None
        if own_http:
            self._http = httpx.AsyncClient(timeout=self.settings.contact_lookup_timeout_s)
        try:
            async with trio.open_nursery() as nursery:
                for line in self.lines.values():
                    await nursery.start(line.device.run)
                    nursery.start_soon(self._serve_line, line)
                task_status.started()
        finally:
            if own_http:
                with trio.CancelScope(shield=True):
                    await self._http.aclose()

    async def _serve_line(self, line: _Line) -> None:
        async with trio.open_nursery() as nursery:
            line.nursery = nursery
            while True:
                deadline = line.machine.deadline()
                event = None
                with trio.move_on_at(math.inf if deadline is None else deadline):
                    try:
                        event = await line.device.events.receive()
                    except trio.EndOfChannel:
                        return
                now = trio.current_time()
                notices = line.machine.tick(now) if event is None else line.machine.feed(event, now)
                if self._rings_with_caller(notices):
                    await self._ring_with_caller(line, notices[0], notices[1])
                    continue
                for notice in notices:
                    await self._on_notice(line, notice)

    def _rings_with_caller(self, notices: list[Any]) -> bool:
        """Caller ID before the first ring (NTT Number Display, ETSI, DTMF) starts the call with both
        notices at once: [StateChanged(idle -> ringing), Announce]."""
        return (
            len(notices) == 2
            and isinstance(notices[0], StateChanged)
            and notices[0].new == "ringing"
            and isinstance(notices[1], Announce)
            and self.settings.contact_lookup_url is None
        )

    async def _ring_with_caller(self, line: _Line, changed: StateChanged, announce: Announce) -> None:
        """The screen pop in one store unit: ``line.state_changed`` then ``call.incoming``, one commit
        instead of two in a row (with 32 lines ringing at once each commit waits behind the others').
        With a contact lookup configured the announcement waits for the CRM, so it keeps its own task."""
        if line.call is None:
            line.call = self._new_call("in", line)
        call = line.call
        call.set_caller(announce.caller)
        call.rings = announce.rings
        state = {"line": line.settings.name, "old": changed.old, "new": changed.new}
        payload = {**self._ids(call), "caller": call.caller, "rings": call.rings, "lookup": call.lookup}
        await self._save(call, ("line.state_changed", state), ("call.incoming", payload))

    async def _on_notice(self, line: _Line, notice: Any) -> None:
        name = line.settings.name
        if isinstance(notice, StateChanged):
            await self.bus.publish("line.state_changed", {"line": name, "old": notice.old, "new": notice.new})
            if notice.new == "ringing" and line.call is None:
                line.call = self._new_call("in", line)
        elif isinstance(notice, Announce):
            call = line.call or self._new_call("in", line)
            line.call = call
            call.set_caller(notice.caller)
            call.rings = notice.rings
            line.nursery.start_soon(self._announce, line, call)
        elif isinstance(notice, CallerUpdated) and line.call is not None:
            line.call.set_caller(notice.caller)
            await self._save(line.call)
        elif isinstance(notice, RingCounted) and line.call is not None:
            line.call.rings = notice.rings
            wanted = line.settings.auto_answer_rings
            if wanted is not None and notice.rings >= wanted and line.call.state == "ringing":
                line.call.state = "answering"
                line.nursery.start_soon(self._answer, line, line.call)
        elif isinstance(notice, RingingStopped) and line.call is not None:
            call, line.call = line.call, None
            cause = "answered_elsewhere" if notice.answered_elsewhere else "missed"
            if call.mark_ended(cause):
                call.rings = notice.rings
                await self._save(
                    call,
                    (
                        "call.missed",
                        {**self._ids(call), "rings": notice.rings, "caller": call.caller, "cause": cause},
                    ),
                    ("call.ended", self._ended_data(call)),
                )
        elif isinstance(notice, Digit) and line.call is not None:
            call = line.call
            call.key_pressed(notice.digit)
            digit = "*" if call.suppress_dtmf_events else notice.digit
            await self.bus.publish(
                "call.dtmf", {**self._ids(call), "digit": digit, "redacted": call.suppress_dtmf_events}
            )
        elif isinstance(notice, ToneHeard) and line.signals is not None:
            try:
                line.signals.send_nowait(notice.signal)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        elif isinstance(notice, FarEndGone) and line.call is not None:
            await self._end(line, line.call, notice.cause)
        elif isinstance(notice, Waiting) and line.call is not None:
            await self.bus.publish(
                "call.waiting", {**self._ids(line.call), "caller": notice.caller.to_json()}
            )
        elif isinstance(notice, DeviceGone):
            if line.call is not None:
                await self._end(line, line.call, "device_lost", hook=False)

    # ================================================================================== calls
    def _new_call(self, direction: str, line: _Line) -> Call:
        call = Call(
            new_message_id("call_"),
            direction,
            line.settings.name,
            line.device,
            self.prompts,
            on_hangup=self._hangup_request,
            headset_position=line.settings.headset_position,
        )
        self.calls[call.id] = call
        self._forget_old()
        return call

    def _forget_old(self) -> None:
        ended = [cid for cid, c in self.calls.items() if c.ended.is_set()]
        for cid in ended[: max(0, len(ended) - self.settings.recent_calls)]:
            del self.calls[cid]

    @staticmethod
    def _ids(call: Call) -> dict[str, Any]:
        return {"call_id": call.id, "line": call.line, "direction": call.direction}

    def _ended_data(self, call: Call) -> dict[str, Any]:
        return {**self._ids(call), "cause": call.cause, "duration": call.duration_s, "number": call.number}

    async def _save(self, call: Call, *events: tuple[str, dict]) -> None:
        data = call.to_json()

        def unit(tx) -> None:
            voice_sql.save_call(tx, data)
            for type_, payload in events:
                tx.append_event(type_, payload)

        # A call's row (and its attempts: a few) and its events, by key: light (no thread hop).
        await self.store.write(unit, light=True)

    async def _announce(self, line: _Line, call: Call) -> None:
        """call.incoming as soon as the caller is known, with the CRM's contact lookup when it answers in
        time (never later than ``contact_lookup_timeout_s``)."""
        if self._http is not None and self.settings.contact_lookup_url is not None:
            call.lookup = await self._lookup(call)
        payload = {**self._ids(call), "caller": call.caller, "rings": call.rings, "lookup": call.lookup}
        await self._save(call, ("call.incoming", payload))

    async def _lookup(self, call: Call) -> dict[str, Any] | None:
        number = (call.caller or {}).get("e164") or (call.caller or {}).get("raw")
        if not number:
            return None
        with trio.move_on_after(self.settings.contact_lookup_timeout_s):
            try:
                reply = await self._http.get(
                    str(self.settings.contact_lookup_url), params={"number": number, "line": call.line}
                )
                if reply.status_code == 200:
                    body = reply.json()
                    if isinstance(body, dict):
                        return {"name": body.get("name"), "patient_id": body.get("patient_id")}
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("contact_lookup_failed", call_id=call.id, error=str(exc))
        return None

    async def answer(self, call_id: str) -> Call:
        """Answer a ringing incoming call (API or auto-answer)."""
        line, call = self._line_of(call_id)
        if call.direction != "in" or call.state not in ("ringing", "answering"):
            raise VoiceError(
                "conflict", f"call {call_id} is {call.state}; only a ringing call can be answered"
            )
        call.state = "answering"
        await self._answer(line, call)
        return call

    async def _answer(self, line: _Line, call: Call) -> None:
        try:
            await line.device.off_hook()
        except DeviceUnavailable as exc:
            log.warning("answer_failed", call_id=call.id, error=str(exc))
            return
        for notice in line.machine.seized() + line.machine.connected(trio.current_time()):
            await self._on_notice(line, notice)
        call.mark_answered("gateway", 1.0)
        await self._save(
            call, ("call.answered", {**self._ids(call), "answered_by": "gateway", "confidence": 1.0})
        )
        await self._after_answer(line, call, record=line.settings.record)

    async def _after_answer(self, line: _Line, call: Call, *, record: bool) -> None:
        if record or self.settings.record_all:
            line.nursery.start_soon(self._record_call, line, call, None)
        if self.settings.silence_hangup_s is not None:
            line.nursery.start_soon(self._hang_up_on_silence, line, call, self.settings.silence_hangup_s)
        if self.on_answer is not None:
            line.nursery.start_soon(self._run_hook, call)

    async def _run_hook(self, call: Call) -> None:
        try:
            await self.on_answer(call)
        except CallEnded:
            return
        except Exception:
            log.exception("answer_hook_failed", call_id=call.id)
            await call.hangup("ivr_error")

    async def _hang_up_on_silence(self, line: _Line, call: Call, limit_s: float) -> None:
        """Hang up a connected call after ``limit_s`` of received silence (the far end left and the
        exchange gave no clear-down signal). Silence is counted in line time (received samples), so a box
        that stops delivering audio never counts as silence; audio received while a prompt plays is not
        silence either (a listening caller is quiet)."""
        tap = line.device.audio()
        quiet = 0
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_when, call.ended, nursery.cancel_scope)
                async for frame in tap:
                    quiet = 0 if call.playing or frame_is_loud(frame) else quiet + frame.size
                    if quiet >= limit_s * 8000:
                        break
                nursery.cancel_scope.cancel()
        finally:
            tap.close()
        if quiet >= limit_s * 8000 and not call.ended.is_set():
            log.info("silence_hangup", call_id=call.id, seconds=limit_s)
            await self._end(line, call, "silence")

    async def _hangup_request(self, call: Call, cause: str) -> None:
        line = self.lines[call.line]
        await self._end(line, call, cause)

    async def _end(self, line: _Line, call: Call, cause: str, *, hook: bool = True) -> None:
        if not call.mark_ended(cause):
            return
        if line.call is call:
            line.call = None
        for scope in line.playbacks.values():
            scope.cancel()
        if hook:
            try:
                await line.device.on_hook()
            except DeviceUnavailable as exc:
                log.warning("on_hook_failed", line=line.settings.name, error=str(exc))
            for notice in line.machine.released():
                await self._on_notice(line, notice)
        await self._save(call, ("call.ended", self._ended_data(call)))

    async def hangup(self, call_id: str, cause: str = "api") -> Call:
        _, call = self._line_of(call_id)
        await call.hangup(cause)
        return call

    def _line_of(self, call_id: str) -> tuple[_Line, Call]:
        call = self.calls.get(call_id)
        if call is None:
            raise VoiceError("not_found", f"no active or recent call {call_id}")
        return self.lines[call.line], call

    def get_active(self, call_id: str) -> Call | None:
        return self.calls.get(call_id)

    def active_calls(self) -> list[Call]:
        return [c for c in self.calls.values() if not c.ended.is_set()]

    def line_views(self) -> list[dict[str, Any]]:
        return [
            {
                "name": n,
                "driver": ln.settings.driver,
                "state": ln.machine.state,
                "call_id": ln.call.id if ln.call else None,
                "headset_position": ln.settings.headset_position,
                "auto_answer_rings": ln.settings.auto_answer_rings,
            }
            for n, ln in self.lines.items()
        ]

    # ================================================================================== outbound
    async def dial(
        self,
        to: list[str],
        *,
        line: str | None = None,
        play: list[str] | None = None,
        ivr_entry: str | None = None,
        record: bool = False,
        timeout_s: float | None = None,
    ) -> Call:
        if not to:
            raise VoiceError("invalid_request", "'to' needs at least one number")
        digits = []
        for number in to:
            try:
                digits.append(dialer.dial_string(number, self.settings.region))
            except ValueError as exc:
                raise VoiceError("invalid_number", str(exc)) from None
        prompts = [self._prompt_path(p) for p in play or ()]
        chosen = self._free_line(line)
        call = self._new_call("out", chosen)
        if ivr_entry:
            call.vars["ivr_entry"] = ivr_entry
        chosen.call = call
        chosen.machine.hold()  # from now on a ring on this line is not a new call (until the sequence ends)
        await self._save(call)
        timeout = timeout_s or self.settings.no_answer_timeout_s
        chosen.nursery.start_soon(
            self._outbound, chosen, call, list(zip(to, digits, strict=True)), prompts, record, timeout
        )
        return call

    def _free_line(self, name: str | None) -> _Line:
        if name is not None:
            line = self.lines.get(name)
            if line is None:
                raise VoiceError("not_found", f"no line {name!r}; lines: {', '.join(self.lines) or 'none'}")
            if line.machine.state != "idle" or line.call is not None:
                raise VoiceError("line_busy", f"line {name} is {line.machine.state}")
            return line
        for line in self.lines.values():
            if line.machine.state == "idle" and line.call is None and line.nursery is not None:
                return line
        raise VoiceError("line_busy", "no line is free")

    def _prompt_path(self, prompt: str) -> Path:
        base = self.settings.prompts_dir.resolve()
        path = (base / prompt).resolve()
        if not path.is_relative_to(base):
            raise VoiceError("invalid_request", f"prompt {prompt!r} is outside the prompts directory")
        if not path.is_file():
            raise VoiceError("invalid_request", f"prompt {prompt!r} does not exist")
        return path

    async def _outbound(
        self,
        line: _Line,
        call: Call,
        numbers: list[tuple[str, str]],
        prompts: list[Path],
        record: bool,
        timeout_s: float,
    ) -> None:
        try:
            await self._dial_sequence(line, call, numbers, prompts, record, timeout_s)
        finally:
            with trio.CancelScope(shield=True):
                for notice in line.machine.unhold():
                    await self._on_notice(line, notice)

    async def _until_rings_stop(self, line: _Line, call: Call, limit_s: float) -> None:
        """Before seizing a held line again: if the exchange rang it between attempts, wait until that
        ringing is over (going off hook would answer the caller instead of getting dial tone), at most
        ``limit_s``."""
        with trio.move_on_after(limit_s):
            while (quiet_at := line.machine.held_ring_quiet_at) is not None and not call.ended.is_set():
                if trio.current_time() >= quiet_at:
                    return
                with trio.move_on_at(quiet_at):
                    await call.ended.wait()

    async def _dial_sequence(
        self,
        line: _Line,
        call: Call,
        numbers: list[tuple[str, str]],
        prompts: list[Path],
        record: bool,
        timeout_s: float,
    ) -> None:
        verdict = dialer.Verdict("failed")
        for seq, (number, digits) in enumerate(numbers):
            if call.ended.is_set():
                return
            if seq:
                with trio.move_on_after(self.timings.clear_s):  # on hook long enough for the exchange
                    await call.ended.wait()  # to clear down (or the call is cancelled meanwhile)
            await self._until_rings_stop(line, call, self.settings.no_answer_timeout_s)
            if call.ended.is_set():
                return
            attempt = Attempt(number, to_e164_or_none(number, self.settings.region))
            call.attempts.append(attempt)
            verdict = await self._attempt(line, call, digits, timeout_s)
            attempt.result, attempt.ended_at = verdict.result, format_time(utc_now())
            event = {**self._ids(call), "number": number, "seq": seq + 1, "result": verdict.result}
            if verdict.result == "answered":
                line.machine.unhold()  # the call holds the line now; its hang-up frees it
                for notice in line.machine.connected(trio.current_time()):
                    await self._on_notice(line, notice)
                call.mark_answered(verdict.answered_by or "unknown", verdict.confidence)
                await self._save(
                    call,
                    ("call.attempt", event),
                    (
                        "call.answered",
                        {
                            **self._ids(call),
                            "number": number,
                            "answered_by": verdict.answered_by,
                            "confidence": verdict.confidence,
                        },
                    ),
                )
                break
            await self._save(call, ("call.attempt", event))
            try:
                await line.device.on_hook()
            except DeviceUnavailable:
                pass
            for notice in line.machine.released():
                await self._on_notice(line, notice)
        else:
            line.call = None if line.call is call else line.call
            if call.mark_ended(verdict.result):
                await self._save(call, ("call.ended", self._ended_data(call)))
            return
        await self._after_answer(line, call, record=record)
        for prompt in prompts:
            try:
                await call.play([prompt])
            except (CallEnded, PromptError):
                return

    async def _attempt(self, line: _Line, call: Call, digits: str, timeout_s: float) -> dialer.Verdict:
        send, receive = trio.open_memory_channel[str](64)
        line.signals = send
        try:
            try:
                await line.device.off_hook()
            except DeviceUnavailable:
                return dialer.Verdict("failed")
            for notice in line.machine.seized():
                await self._on_notice(line, notice)

            def dialling() -> None:
                line.machine.dialling()

            async def ringing() -> None:
                await self.bus.publish(
                    "call.ringing", {**self._ids(call), "number": call.attempts[-1].number}
                )

            async with trio.open_nursery() as nursery:
                result: list[dialer.Verdict] = []

                async def judge() -> None:
                    result.append(
                        await dialer.dial_attempt(
                            line.device,
                            digits,
                            receive,
                            timeout_s=timeout_s,
                            timings=self.timings,
                            on_dialling=dialling,
                            on_ringing=ringing,
                        )
                    )
                    nursery.cancel_scope.cancel()

                async def ended() -> None:
                    await call.ended.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(judge)
                nursery.start_soon(ended)
            return result[0] if result else dialer.Verdict("failed")
        finally:
            line.signals = None
            send.close()

    # ================================================================================== media
    async def start_playback(self, call_id: str, prompts: list[str]) -> str:
        line, call = self._line_of(call_id)
        if call.state != "connected":
            raise VoiceError("conflict", f"call {call_id} is {call.state}; playbacks need a connected call")
        paths = [self._prompt_path(p) for p in prompts]
        playback_id = new_message_id("pb_")
        scope = trio.CancelScope()
        line.playbacks[playback_id] = scope
        line.nursery.start_soon(self._playback, line, call, playback_id, paths, scope)
        return playback_id

    async def _playback(
        self, line: _Line, call: Call, playback_id: str, paths: list[Path], scope: trio.CancelScope
    ) -> None:
        outcome = "finished"
        with scope:
            try:
                await call.play(paths)
            except CallEnded:
                outcome = "call_ended"
            except PromptError as exc:
                outcome = f"failed: {exc}"
        if scope.cancelled_caught:
            outcome = "stopped" if not call.ended.is_set() else "call_ended"
        line.playbacks.pop(playback_id, None)
        await self.bus.publish(
            "playback.finished", {**self._ids(call), "playback_id": playback_id, "outcome": outcome}
        )

    def stop_playback(self, call_id: str, playback_id: str) -> None:
        line, _ = self._line_of(call_id)
        scope = line.playbacks.get(playback_id)
        if scope is None:
            raise VoiceError("not_found", f"no playback {playback_id} on call {call_id}")
        scope.cancel()

    async def start_recording(self, call_id: str, max_seconds: float | None = None) -> str:
        line, call = self._line_of(call_id)
        if call.state != "connected":
            raise VoiceError("conflict", f"call {call_id} is {call.state}; recordings need a connected call")
        rec_id = new_message_id("rec_")
        line.nursery.start_soon(self._record_call, line, call, max_seconds, rec_id)
        return rec_id

    async def _record_call(
        self, line: _Line, call: Call, max_seconds: float | None, rec_id: str | None = None
    ) -> None:
        rec_id = rec_id or new_message_id("rec_")
        started = utc_now()
        suffix = "flac" if self.settings.recording_format == "FLAC" else "wav"
        path = self.settings.recordings_dir / started.strftime("%Y/%m/%d") / f"{call.id}-{rec_id}.{suffix}"
        info = RecordingInfo(call.id, call.line, call.direction, call.number, format_time(started))
        writer = await trio.to_thread.run_sync(
            lambda: RecordingWriter(path, info, format=self.settings.recording_format)
        )
        row = {
            "id": rec_id,
            "call_id": call.id,
            "line": call.line,
            "path": str(path),
            "format": self.settings.recording_format,
            "state": "recording",
            "started_at": info.started_at,
        }
        await self.store.write(lambda tx: voice_sql.insert_recording(tx, row))
        tap = line.device.audio()
        try:
            with trio.move_on_after(math.inf if max_seconds is None else max_seconds):
                async with trio.open_nursery() as nursery:

                    async def stop_at_end() -> None:
                        await call.ended.wait()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(stop_at_end)
                    async for frame in tap:
                        await writer.write(frame)
        finally:
            tap.close()
            await writer.close()
            ended_at = format_time(utc_now())
            payload = {
                **self._ids(call),
                "recording_id": rec_id,
                "duration_s": round(writer.seconds, 3),
                "url": f"/v1/recordings/{rec_id}",
            }

            captured = writer.samples > 0

            def unit(tx) -> None:
                voice_sql.finish_recording(tx, rec_id, ended_at, round(writer.seconds, 3))
                if captured:  # nothing captured (the call ended first): no file, no recording.ready
                    tx.append_event("recording.ready", payload)

            if not captured:
                path.unlink(missing_ok=True)

            with trio.CancelScope(shield=True):
                await self.store.write(unit)

    # ================================================================================== reads
    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        live = self.calls.get(call_id)
        if live is not None:
            return live.to_json()
        return await self.store.read(lambda tx: voice_sql.get_call(tx, call_id))

    async def list_calls(self, state: str | None) -> list[dict[str, Any]]:
        return await self.store.read(lambda tx: voice_sql.list_calls(tx, state=state))

    async def send_dtmf(self, call_id: str, digits: str) -> None:
        _, call = self._line_of(call_id)
        try:
            await call.send_dtmf(digits)
        except (CallEnded, CallError) as exc:
            raise VoiceError("conflict", str(exc)) from None

    async def bridge(self, call_id: str, position: str | None) -> Call:
        _, call = self._line_of(call_id)
        try:
            if position is None:
                await call.unbridge()
            else:
                await call.bridge(position)
        except (CallEnded, CallError) as exc:
            raise VoiceError("conflict", str(exc)) from None
        return call
