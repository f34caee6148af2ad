"""One caller's walk through a published IVR tree (issue 6).

``IvrSession(tree, revision, call, clock=..., services=...)`` holds its own parsed tree, so a publish during
the call does not change it. ``run()`` walks nodes until a hangup node, the caller hanging up
(``CallEnded``), or a queue handing the call to an operator; it never raises for the caller's behaviour, and a
broken prompt file or an unreachable CRM is logged and routed like the tree says, not a traceback.

Semantics the YAML leaves open, decided here:
- A key that interrupts a ``play`` node is kept (session type-ahead) for the next node that reads keys, so
  "press 1 for Japanese" during the welcome selects Japanese in the language node that follows. A node that
  starts with type-ahead skips its greeting.
- ``menu``: the long greeting plays on the first visit, the short one (when set) on repeats and on returns;
  ``repeat_key`` replays the long one and does not count as a try. ``tries`` counts invalid entries and
  timeouts together; ``back_key`` goes to the menu visited before this one (no previous menu: invalid).
- ``ivr.node`` is published when a node is done: ``{call_id, node, type, input, next}``; ``input`` is the key
  or digits the node read (``"***"`` for sensitive nodes, null when it read none).
- Loop guard (``IvrTree.loop_limit``): entering one node more than the limit goes to ``loop_fallback`` once
  more entries are not possible; a fallback that itself passes the limit (or none set) hangs up.
"""

from __future__ import annotations

import datetime as dt
import inspect
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import structlog
import trio

from gateway.ivr.checks import resolve_prompt
from gateway.ivr.model import (
    DTMF_KEYS,
    GotoNode,
    HangupNode,
    IvrTree,
    LanguageNode,
    MenuNode,
    PlayNode,
    QueueNode,
    RecordNode,
    SayNode,
    SayPrompt,
    ScheduleNode,
    SetNode,
    SurveyNode,
    SurveyQuestion,
    WebhookNode,
    expand_prompt,
)
from gateway.ivr.say import SayError, say_value

log = structlog.get_logger("ivr")

REDACTED = "***"
MAX_STEPS = 10_000  # hard stop for a tree walk, far above any real call (loop_limit x nodes)


class CallEnded(Exception):
    """Fallback for tests without the voice package; the real one is ``gateway.voice.calls.CallEnded``."""


def _call_ended_types() -> tuple[type[BaseException], ...]:
    try:  # the voice engineer's module; absent while it is being written
        from gateway.voice.calls import CallEnded as VoiceCallEnded  # type: ignore[import-not-found]
    except ImportError:
        return (CallEnded,)
    return (CallEnded, VoiceCallEnded)


class CallControl(Protocol):
    """The subset of ``gateway.voice.calls.CallControl`` the runtime uses (see docs/architecture.md)."""

    id: str
    direction: str
    line: str
    caller: dict | None
    vars: dict[str, Any]
    ended: trio.Event

    async def play(self, prompts: Sequence[Path], *, interrupt_keys: str = "") -> str | None: ...
    async def collect(
        self,
        *,
        max_digits: int,
        min_digits: int = 1,
        terminator: str | None = "#",
        first_timeout: float,
        inter_timeout: float,
    ) -> str: ...
    async def record(
        self, path: Path, *, max_seconds: float, silence_end_s: float | None, beep: bool = True
    ) -> float: ...
    async def bridge(self, position: str) -> None: ...
    async def hangup(self, cause: str = "normal") -> None: ...


@dataclass(frozen=True)
class SurveyAnswer:
    """One stored answer: enough to rebuild the form later (survey + its revision + the exact text)."""

    call_id: str
    survey: str
    survey_revision: int
    tree_revision: int
    question_id: str
    question_text: str
    language: str
    answer: str | None  # None: no valid answer before the tries ran out
    sensitive: bool
    answered_at: str


class AnswerSink(Protocol):
    async def save_answer(self, answer: SurveyAnswer) -> None:
        """Store the answer and publish ``survey.answered`` (in one transaction)."""


@dataclass(frozen=True)
class QueueRequest:
    """What a queue node asks of the QueueManager (``gateway.ivr.queue``)."""

    call: Any
    queue: str  # the queue node's id
    positions: tuple[str, ...]
    priority: int
    playlist: tuple[Path, ...]
    announce_every: float | None
    announcement: Callable[[int, int], list[Path]] | None  # (position, wait minutes) -> files
    max_wait: float
    max_callers: int | None


class QueueHandler(Protocol):
    async def wait(self, request: QueueRequest) -> str:
        """'answered' (bridged) or 'overflow' / 'full' / 'no_position'; raises CallEnded."""


@dataclass
class SessionServices:
    """What a session needs from the gateway; the IvrService builds one per deployment."""

    prompts_dir: Path
    publish: Callable[[str, dict], Awaitable[Any]]  # EventBus.publish
    recordings_dir: Path
    http: httpx.AsyncClient | None = None
    answers: AnswerSink | None = None
    queues: QueueHandler | None = None


EVENT_FLUSH_S = 5.0  # at the session's end, at most this long for its last events to reach the journal


class _Hangup(Exception):
    """Internal: the tree ended the call (hangup node, loop guard)."""


# Nodes that only play audio, read keys or move on: the events before them need not be committed first.
# Before any other node (queues, surveys, webhooks, recordings: other producers and stores take part) the
# session's events are flushed, so every event of a call keeps its order in the journal.
_NO_FLUSH_NODES = frozenset({"menu", "play", "say", "set", "goto", "schedule", "language"})


class _OrderedEvents:
    """A session's events, journalled one after the other in the order emitted, without the walk waiting
    for each commit: the key that leaves a menu starts the next prompt at once and its ``ivr.node`` commits
    while that prompt plays. (Measured with bench/bench_ivr.py: with 32 callers pressing keys together,
    waiting for the commits queued ~30 ms of group commits in front of every prompt.) ``flush`` waits until
    everything emitted so far is committed."""

    def __init__(self, publish: Callable[[str, dict], Awaitable[Any]], log: Any) -> None:
        self._publish = publish
        self._log = log
        self._send, self._receive = trio.open_memory_channel[tuple[str, dict]](1000)
        self._unpublished = 0
        self._all_published = trio.Event()
        self._all_published.set()

    def emit(self, type_: str, data: dict) -> None:
        if self._unpublished == 0:
            self._all_published = trio.Event()
        self._unpublished += 1
        self._send.send_nowait((type_, data))

    async def flush(self) -> None:
        await self._all_published.wait()

    async def run(self) -> None:
        """Publish in order until cancelled; a cancellation waits for the event being published."""
        while True:
            item = await self._receive.receive()
            with trio.CancelScope(shield=True):
                await self._publish_one(*item)

    async def publish_rest(self) -> None:
        """After ``run`` ended: publish what it had not taken, in order."""
        while True:
            try:
                item = self._receive.receive_nowait()
            except trio.WouldBlock:
                return
            await self._publish_one(*item)

    async def _publish_one(self, type_: str, data: dict) -> None:
        try:
            await self._publish(type_, data)
        except Exception:  # the store is closing or broken: the walk must go on; the log says what
            self._log.exception("ivr event not journalled", event_type=type_)
        self._unpublished -= 1
        if self._unpublished == 0:
            self._all_published.set()


@dataclass
class _Walk:
    entries: dict[str, int] = field(default_factory=dict)
    visited_menus: list[str] = field(default_factory=list)  # for back_key
    seen_menus: set[str] = field(default_factory=set)  # short greeting on returns
    typeahead: str = ""  # keys read by a play node that the next reading node consumes


class IvrSession:
    def __init__(
        self,
        tree: IvrTree,
        revision: int,
        call: CallControl,
        *,
        clock: Callable[[], dt.datetime],
        services: SessionServices,
        entry: str | None = None,
    ):
        self.tree = tree
        self.revision = revision
        self.call = call
        self.clock = clock
        self.services = services
        self.entry = entry or tree.entry
        if self.entry not in tree.nodes:
            raise ValueError(f"entry node {self.entry!r} is not in revision {revision} of the tree")
        self._walk = _Walk()
        self._events = _OrderedEvents(services.publish, log.bind(call_id=call.id))
        self._sensitive_vars = tree.sensitive_variables()
        self._ended_types = _call_ended_types()
        self.outcome: str | None = None  # hangup | caller_hangup | bridged | error
        call.vars.setdefault("language", tree.default_language)
        call.vars.setdefault("call_id", call.id)
        call.vars.setdefault("line_id", call.line)
        number = (call.caller or {}).get("e164") or (call.caller or {}).get("raw")
        if number:
            call.vars.setdefault("caller_number", number)
        self._log = log.bind(call_id=call.id, revision=revision)

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def language(self) -> str:
        lang = self.call.vars.get("language")
        return lang if lang in self.tree.languages else self.tree.default_language

    async def _emit(self, type_: str, **data: Any) -> None:
        """Queue the event for the journal (in order; see _OrderedEvents) without waiting for its commit."""
        self._events.emit(type_, {"call_id": self.call.id, **data})

    def _prompt_paths(self, ref: str | dict[str, str] | None) -> list[Path]:
        if ref is None:
            return []
        choices = expand_prompt(ref, self.tree.languages)
        rel = choices.get(self.language) or choices.get(None) or choices.get(self.tree.default_language)
        if rel is None:
            rel = next(iter(choices.values()))
        path = resolve_prompt(self.services.prompts_dir, rel)
        if path is None:
            self._log.error(
                "prompt file missing, skipped", prompt=rel, prompts_dir=str(self.services.prompts_dir)
            )
            return []
        return [path]

    def _fragment_paths(self, kind: str, value: Any) -> list[Path]:
        folder = self.services.prompts_dir / self.tree.say_fragments.replace("{lang}", self.language)
        try:
            names = say_value(kind, value, self.language, lambda n: resolve_prompt(folder, n) is not None)
        except SayError as exc:
            self._log.warning(
                "value not spoken", kind=kind, reason=str(exc) if not self._secret(value) else ""
            )
            return []
        paths = [resolve_prompt(folder, n) for n in names]
        if any(p is None for p in paths):
            self._log.error("say fragment missing, value not spoken", folder=str(folder), kind=kind)
            return []
        return [p for p in paths if p is not None]

    def _secret(self, value: Any) -> bool:
        return any(self.call.vars.get(v) == value for v in self._sensitive_vars)

    def _public_vars(self) -> dict[str, Any]:
        return {k: (REDACTED if k in self._sensitive_vars else v) for k, v in self.call.vars.items()}

    def _sensitive(self, on: bool) -> None:
        """Tell the call not to publish call.dtmf events while sensitive digits are typed."""
        self.call.suppress_dtmf_events = on  # type: ignore[attr-defined]

    async def _play(self, paths: list[Path], interrupt_keys: str = "") -> str | None:
        if self._walk.typeahead and interrupt_keys:
            return None  # the caller already answered: do not make them listen again
        if not paths:
            return None
        return await self.call.play(paths, interrupt_keys=interrupt_keys)

    async def _read(
        self, *, max_digits: int, terminator: str | None, first_timeout: float, inter_timeout: float, first=""
    ) -> str:
        """Digits typed: type-ahead, then the key that interrupted a prompt, then collect the rest.

        Keys beyond what this read takes stay in the type-ahead for the next one."""
        got = (first or "") + self._walk.typeahead  # `first` came before what is still buffered
        self._walk.typeahead = ""
        if terminator and terminator in got[: max_digits + 1]:
            head, _, self._walk.typeahead = got.partition(terminator)
            return head
        if len(got) >= max_digits:
            self._walk.typeahead = got[max_digits:]
            return got[:max_digits]
        rest = await self.call.collect(
            max_digits=max_digits - len(got),
            min_digits=1,
            terminator=terminator,
            first_timeout=inter_timeout if got else first_timeout,
            inter_timeout=inter_timeout,
        )
        return got + rest

    # -------------------------------------------------------------------------------------------- run
    async def run(self) -> str:
        """Walk the tree until the call ends; returns the outcome (also in ``self.outcome``)."""
        self._log.info("ivr session start", entry=self.entry, line=self.call.line)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._events.run)
                try:
                    await self._walk_events()
                finally:
                    nursery.cancel_scope.cancel()  # the runner stops after the event it is publishing
        finally:
            # Everything the walk emitted reaches the journal, even when the call is being torn down.
            with trio.CancelScope(shield=True), trio.move_on_after(EVENT_FLUSH_S):
                await self._events.publish_rest()
        self._log.info("ivr session end", outcome=self.outcome)
        return self.outcome or "hangup"

    async def _walk_events(self) -> None:
        try:
            await self._emit(
                "ivr.entered",
                entry=self.entry,
                revision=self.revision,
                language=self.language,
                direction=self.call.direction,
                line=self.call.line,
            )
            await self._walk_tree(self.entry)
        except _Hangup:
            self.outcome = "hangup"
            await self._hangup_quietly()
        except self._ended_types:
            self.outcome = self.outcome or "caller_hangup"
        except Exception:  # a bug or a broken device: end this call cleanly, keep the gateway running
            self._log.exception("ivr session failed; hanging up")
            self.outcome = "error"
            await self._hangup_quietly()

    async def _hangup_quietly(self) -> None:
        await self._events.flush()  # the session's events before the call's end
        try:
            await self.call.hangup("normal")
        except self._ended_types:
            pass

    async def _walk_tree(self, node_id: str | None) -> None:
        for _ in range(MAX_STEPS):
            if node_id is None:
                raise _Hangup
            node_id = await self._loop_guard(node_id)
            node = self.tree.nodes[node_id]
            self._log.debug("node", node=node_id, type=node.type)
            handler = getattr(self, f"_node_{node.type}")
            if node.type not in _NO_FLUSH_NODES:
                await self._events.flush()
            nxt, shown_input = await handler(node_id, node)
            await self._emit("ivr.node", node=node_id, type=node.type, input=shown_input, next=nxt)
            if self.outcome == "bridged":
                return
            node_id = nxt
        raise _Hangup

    async def _loop_guard(self, node_id: str) -> str:
        """The node to enter: ``node_id``, or ``loop_fallback`` once ``node_id`` passed ``loop_limit``."""
        entries = self._walk.entries
        entries[node_id] = entries.get(node_id, 0) + 1
        if entries[node_id] <= self.tree.loop_limit:
            return node_id
        fallback = self.tree.loop_fallback
        self._log.warning("loop limit reached", node=node_id, limit=self.tree.loop_limit, fallback=fallback)
        await self._emit("ivr.exhausted", node=node_id, reason="loop_limit", next=fallback)
        if fallback is None or fallback == node_id:
            raise _Hangup
        entries[fallback] = entries.get(fallback, 0) + 1
        if entries[fallback] > self.tree.loop_limit:
            raise _Hangup
        return fallback

    # ------------------------------------------------------------------------------------------ nodes
    async def _node_play(self, node_id: str, node: PlayNode) -> tuple[str | None, str | None]:
        paths = [p for ref in node.prompts for p in self._prompt_paths(ref)]
        keys = "".join(node.interrupt_keys)
        if self._walk.typeahead and keys:
            return node.next, None  # an earlier key already skips this prompt
        key = await self._play(paths, keys)
        if key:
            self._walk.typeahead += key
        return node.next, key

    async def _node_say(self, node_id: str, node: SayNode) -> tuple[str | None, str | None]:
        paths: list[Path] = []
        for item in node.items:
            if isinstance(item, SayPrompt):
                paths += self._prompt_paths(item.prompt)
                continue
            value = self.call.vars.get(item.var)
            if value is None:
                self._log.warning("say: variable not set", node=node_id, var=item.var)
                continue
            paths += self._fragment_paths(item.as_, value)
        await self._play(paths)
        return node.next, None

    async def _node_schedule(self, node_id: str, node: ScheduleNode) -> tuple[str | None, str | None]:
        now = self.clock()
        state = self.tree.schedules[node.schedule].state_at(now, self.tree.timezone)
        target = {"open": node.open, "closed": node.closed, "holiday": node.holiday or node.closed}[state]
        self._log.debug("schedule", node=node_id, state=state, at=now.isoformat())
        return target, state

    async def _node_set(self, node_id: str, node: SetNode) -> tuple[str | None, str | None]:
        self.call.vars.update(node.variables)
        return node.next, None

    async def _node_goto(self, node_id: str, node: GotoNode) -> tuple[str | None, str | None]:
        return node.target, None

    async def _node_hangup(self, node_id: str, node: HangupNode) -> tuple[str | None, str | None]:
        await self._play(self._prompt_paths(node.prompt))
        await self._emit("ivr.node", node=node_id, type=node.type, input=None, next=None)
        raise _Hangup  # the walk's own ivr.node is not reached

    async def _node_language(self, node_id: str, node: LanguageNode) -> tuple[str | None, str | None]:
        paths = self._prompt_paths(node.prompt)
        for attempt in range(1, node.tries + 1):
            first = await self._play(paths, DTMF_KEYS) if not self._walk.typeahead else None
            key = await self._read(
                max_digits=1,
                terminator=None,
                first_timeout=node.timeout,
                inter_timeout=node.timeout,
                first=first or "",
            )
            if key in node.options:
                self.call.vars["language"] = node.options[key]
                return node.next, key
            await self._emit(
                "ivr.input_invalid",
                node=node_id,
                reason="timeout" if not key else "invalid",
                input=key or None,
                attempt=attempt,
            )
        return node.next, None  # the current language stays

    async def _node_menu(self, node_id: str, node: MenuNode) -> tuple[str | None, str | None]:
        visited = self._walk.visited_menus
        returning = node_id in self._walk.seen_menus
        self._walk.seen_menus.add(node_id)
        if not visited or visited[-1] != node_id:
            visited.append(node_id)
        greeting = node.short_greeting if returning and node.short_greeting else node.greeting
        control = {node.back_key, node.repeat_key, node.top_key} - {None}
        tries = 0
        if node.sensitive:
            self._sensitive(True)
        try:
            while True:
                first = await self._play(self._prompt_paths(greeting), DTMF_KEYS) or ""
                # One key first: a control key acts at once, even in a multi-digit menu.
                typed = await self._read(
                    max_digits=1,
                    terminator=None,
                    first=first,
                    first_timeout=node.first_digit_timeout,
                    inter_timeout=node.inter_digit_timeout,
                )
                c = node.collect
                if c is not None and typed and typed not in control:
                    if typed == c.terminator:
                        typed = ""
                    elif c.max_digits > 1:
                        typed = await self._read(
                            max_digits=c.max_digits,
                            terminator=c.terminator,
                            first=typed,
                            first_timeout=node.inter_digit_timeout,
                            inter_timeout=node.inter_digit_timeout,
                        )
                shown = REDACTED if node.sensitive and typed and typed not in control else (typed or None)
                if typed and typed == node.repeat_key:
                    greeting = node.greeting
                    continue
                if typed and typed == node.top_key:
                    visited.clear()
                    return self.tree.main_menu or self.tree.entry, typed
                if typed and typed == node.back_key and len(visited) >= 2:
                    visited.pop()
                    return visited[-1], typed
                if node.options is not None and typed in node.options:
                    return node.options[typed], typed
                if c is not None and typed.isdigit() and c.min_digits <= len(typed) <= c.max_digits:
                    self.call.vars[c.store_as] = typed
                    return c.next, shown
                tries += 1
                reason = "timeout" if not typed else "invalid"
                await self._emit("ivr.input_invalid", node=node_id, reason=reason, input=shown, attempt=tries)
                if tries >= node.tries:
                    self._log.info("menu tries exhausted", node=node_id, tries=tries)
                    await self._emit("ivr.exhausted", node=node_id, reason="tries", next=node.on_failure)
                    return node.on_failure, shown
                notice = node.timeout_prompt if reason == "timeout" else node.invalid_prompt
                await self._play(self._prompt_paths(notice))
                greeting = node.short_greeting or node.greeting
        finally:
            if node.sensitive:
                self._sensitive(False)

    async def _node_survey(self, node_id: str, node: SurveyNode) -> tuple[str | None, str | None]:
        if node.sensitive:
            self._sensitive(True)
        answers: dict[str, str | None] = {}
        try:
            await self._play(self._prompt_paths(node.intro))
            for question in node.questions:
                answers[question.id] = await self._ask(node_id, node, question)
        finally:
            if node.sensitive:
                self._sensitive(False)
        shown = {k: (REDACTED if node.sensitive and v is not None else v) for k, v in answers.items()}
        await self._emit(
            "survey.completed",
            node=node_id,
            survey=node.survey,
            survey_revision=node.revision,
            tree_revision=self.revision,
            answers=shown,
            answered=sum(v is not None for v in answers.values()),
            questions=len(answers),
        )
        return node.next, None

    def _question_text(self, question: SurveyQuestion) -> str:
        if isinstance(question.text, str):
            return question.text
        return (
            question.text.get(self.language)
            or question.text.get(self.tree.default_language)
            or next(iter(question.text.values()))
        )

    async def _ask(self, node_id: str, node: SurveyNode, question: SurveyQuestion) -> str | None:
        answer: str | None = None
        for attempt in range(1, node.tries + 1):
            first = await self._play(self._prompt_paths(question.prompt), DTMF_KEYS) or ""
            if question.keys is not None:
                typed = await self._read(
                    max_digits=1,
                    terminator=None,
                    first=first,
                    first_timeout=node.timeout,
                    inter_timeout=node.inter_digit_timeout,
                )
                if typed in question.keys:
                    answer = question.keys[typed]
            else:
                rng = question.range
                assert rng is not None
                # "ended by #": one digit more than the maximum needs, so that an overlong entry is refused
                # rather than cut, and a # after a full-length entry is not left over for the next question.
                typed = await self._read(
                    max_digits=len(str(rng.max)) + 1,
                    terminator="#",
                    first=first,
                    first_timeout=node.timeout,
                    inter_timeout=node.inter_digit_timeout,
                )
                if typed.isdigit() and rng.min <= int(typed) <= rng.max:
                    answer = str(int(typed))
            if answer is not None:
                break
            shown = REDACTED if node.sensitive and typed else (typed or None)
            await self._emit(
                "ivr.input_invalid",
                node=node_id,
                question=question.id,
                reason="timeout" if not typed else "invalid",
                input=shown,
                attempt=attempt,
            )
            if attempt < node.tries:
                await self._play(self._prompt_paths(node.invalid_prompt))
        record = SurveyAnswer(
            call_id=self.call.id,
            survey=node.survey,
            survey_revision=node.revision,
            tree_revision=self.revision,
            question_id=question.id,
            question_text=self._question_text(question),
            language=self.language,
            answer=answer,
            sensitive=node.sensitive,
            answered_at=self.clock().astimezone(dt.UTC).isoformat(),
        )
        if self.services.answers is not None:
            await self._events.flush()  # survey.answered is journalled by the answer's own transaction
            await self.services.answers.save_answer(record)
        else:
            self._log.warning("no answer store configured; survey answer only published", survey=node.survey)
            await self._emit("survey.answered", **survey_answer_event(record))
        return answer

    async def _node_record(self, node_id: str, node: RecordNode) -> tuple[str | None, str | None]:
        await self._play(self._prompt_paths(node.prompt))
        folder = self.services.recordings_dir / node.mailbox
        await trio.Path(folder).mkdir(parents=True, exist_ok=True)
        stamp = self.clock().astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        path = await trio.to_thread.run_sync(_free_path, folder, f"{stamp}-{self.call.id}")
        options: dict[str, Any] = {}
        if _accepts(self.call.record, "finish_keys"):  # always passed: [] must turn the call's default off
            options["finish_keys"] = "".join(node.finish_keys)  # a call without it ends by silence/hangup
        seconds = await self.call.record(
            path, max_seconds=node.max_length, silence_end_s=node.silence_end, beep=node.beep, **options
        )
        if seconds > 0:
            await self._emit(
                "voicemail.ready",
                node=node_id,
                mailbox=node.mailbox,
                path=str(path),
                seconds=round(seconds, 2),
                caller=(self.call.caller or {}).get("e164"),
                vars=self._public_vars(),
                tree_revision=self.revision,
            )
        return node.next, None

    async def _node_webhook(self, node_id: str, node: WebhookNode) -> tuple[str | None, str | None]:
        if self.services.http is None:
            self._log.error("webhook node without an HTTP client", node=node_id)
            return node.on_error, "error"
        payload = {
            "call_id": self.call.id,
            "node": node_id,
            "line": self.call.line,
            "vars": {name: self.call.vars.get(name) for name in node.send},
        }
        answer: Any = None
        reason = ""
        with trio.move_on_after(node.timeout) as scope:
            try:
                if node.method == "POST":
                    response = await self.services.http.post(node.url, json=payload, timeout=node.timeout)
                else:
                    params = {k: "" if v is None else str(v) for k, v in payload["vars"].items()}
                    params["call_id"] = self.call.id
                    response = await self.services.http.get(node.url, params=params, timeout=node.timeout)
                if response.is_success:
                    answer = response.json()
                else:
                    reason = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            except ValueError:
                reason = "the answer is not JSON"
        if scope.cancelled_caught:
            reason = f"no answer within {node.timeout} s"
        if not reason and not isinstance(answer, dict):
            reason = "the answer is not a JSON object"
        if reason:
            self._log.warning("webhook failed", node=node_id, url=node.url, reason=reason)
            return node.on_error, "error"
        for var, key in node.store.items():
            if key in answer:
                self.call.vars[var] = answer[key]
        value = answer.get(node.branch_on)
        value_text = (
            None if value is None else (str(value).lower() if isinstance(value, bool) else str(value))
        )
        if value_text is not None and value_text in node.branches:
            return node.branches[value_text], value_text
        return node.default, value_text

    async def _node_queue(self, node_id: str, node: QueueNode) -> tuple[str | None, str | None]:
        if self.services.queues is None:
            self._log.error("queue node without a queue manager", node=node_id)
            return node.on_overflow, "no_position"
        playlist = tuple(p for ref in node.hold_playlist for p in self._prompt_paths(ref))
        announce = node.announce

        def announcement(position: int, wait_minutes: int) -> list[Path]:
            assert announce is not None
            out: list[Path] = []
            if announce.position_prompt is not None:
                out += self._prompt_paths(announce.position_prompt) + self._fragment_paths("number", position)
                out += self._prompt_paths(announce.position_suffix)
            if announce.wait_prompt is not None:
                out += self._prompt_paths(announce.wait_prompt) + self._fragment_paths("number", wait_minutes)
                out += self._prompt_paths(announce.wait_suffix)
            return out

        result = await self.services.queues.wait(
            QueueRequest(
                call=self.call,
                queue=node_id,
                positions=tuple(node.positions),
                priority=node.priority,
                playlist=playlist,
                announce_every=announce.every if announce else None,
                announcement=announcement if announce else None,
                max_wait=node.max_wait,
                max_callers=node.max_callers,
            )
        )
        if result == "answered":
            self.outcome = "bridged"
            return None, result
        return node.on_overflow, result


def _accepts(method: Callable[..., Any], parameter: str) -> bool:
    """True when ``method`` takes ``parameter`` (a call object from before the option existed does not)."""
    try:
        return parameter in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def _free_path(folder: Path, stem: str) -> Path:
    """``folder/stem-N.wav`` with the first N not taken (a call may leave several messages)."""
    for n in itertools.count(1):
        path = folder / f"{stem}-{n}.wav"
        if not path.exists():
            return path
    raise AssertionError("unreachable")


def survey_answer_event(answer: SurveyAnswer) -> dict[str, Any]:
    """The ``survey.answered`` event data (the answer redacted for a sensitive survey)."""
    return {
        "call_id": answer.call_id,
        "survey": answer.survey,
        "survey_revision": answer.survey_revision,
        "tree_revision": answer.tree_revision,
        "question": answer.question_id,
        "text": answer.question_text,
        "language": answer.language,
        "answer": REDACTED if answer.sensitive and answer.answer is not None else answer.answer,
    }
