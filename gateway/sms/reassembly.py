"""Incoming messages: single PDUs and concatenated parts reassembled into one received Message.

Concatenated parts (TS 23.040 §9.2.3.24.1 IEI 0x00 8-bit reference, §9.2.3.24.8 IEI 0x08 16-bit reference) are
grouped by (modem, sender, reference, total, reference width): two senders, or an 8-bit and a 16-bit
reference with the same value, never mix (/work/shared/notes/sms.md §8; Jasmin #513/#1257). Parts are accepted
in any order, a part seen twice is ignored, and every part is persisted as it arrives so that a restart loses
nothing (gammu #19, #522, #761). A group still incomplete after the timeout (Gammu SMSD MultipartTimeout,
600 s by default) is delivered with what arrived, flagged ``incomplete``.

Each function here is a piece of a unit of work: it runs inside a store transaction (``StoreTx``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.events import format_time
from gateway.numbers import to_e164_or_none
from gateway.sms.models import InboundHook, Message, MessagePart, MessageStatus, PartStatus, new_message_id
from gateway.store.base import Fragment, FragmentGroup, StoreTx


def pdu_digest(pdu_hex: str) -> str:
    """Identity of a PDU as the modem gave it (SCA included): the same PDU reported twice is one message."""
    return hashlib.sha256("".join(pdu_hex.split()).upper().encode()).hexdigest()


@dataclass(frozen=True)
class ReceivedPiece:
    """One decoded SMS-DELIVER as far as reassembly is concerned."""

    modem: str
    sender_raw: str
    text: str
    encoding: str | None
    pdu_hex: str
    received_at: datetime
    seq: int = 1  # position in the concatenated message (1 for a single SMS)


def join_fragments(fragments: Sequence[Fragment]) -> tuple[str, list[int], bool]:
    """Text of the parts in seq order, the seqs present, and whether any seq is missing."""
    ordered = sorted({f.seq: f for f in fragments}.values(), key=lambda f: f.seq)
    total = ordered[0].total if ordered else 0
    seqs = [f.seq for f in ordered]
    return "".join(f.text for f in ordered), seqs, seqs != list(range(1, total + 1))


def record_received(
    tx: StoreTx,
    pieces: Sequence[ReceivedPiece],
    *,
    region: str,
    incomplete: bool = False,
    expected_parts: int | None = None,
    hooks: Sequence[InboundHook] = (),
) -> Message:
    """Insert the received message with one part row per piece and append its ``sms.received`` event.
    Each ``InboundHook`` runs in between and may add keys to the event's data (see models.InboundHook)."""
    first = pieces[0]
    received_at = max(p.received_at for p in pieces)
    message = Message(
        id=new_message_id(),
        direction="in",
        status=MessageStatus.RECEIVED,
        text="".join(p.text for p in pieces),
        parts=expected_parts or len(pieces),
        created_at=received_at,
        updated_at=received_at,
        encoding=first.encoding,
        sender=to_e164_or_none(first.sender_raw, region),
        sender_raw=first.sender_raw,
        modem=first.modem,
        incomplete=incomplete,
        received_at=received_at,
        part_list=[
            MessagePart(
                seq=p.seq,
                status=PartStatus.RECEIVED,
                segment_hex=p.pdu_hex,
                modem=p.modem,
                updated_at=p.received_at,
                pdu_digest=pdu_digest(p.pdu_hex),
            )
            for p in pieces
        ],
    )
    tx.insert_message(message)
    data = received_event_data(message, parts_received=len(pieces))
    for hook in hooks:
        hook.on_received(tx, message, data)
    tx.append_event("sms.received", data)
    return message


def received_event_data(message: Message, *, parts_received: int) -> dict:
    """sms.received: {id, from, from_raw, text, parts, modem, received_at, incomplete}."""
    return {
        "id": message.id,
        "from": message.sender,
        "from_raw": message.sender_raw,
        "text": message.text,
        "parts": parts_received,
        "modem": message.modem,
        "received_at": format_time(message.received_at),
        "incomplete": message.incomplete,
    }


def add_fragment(
    tx: StoreTx, fragment: Fragment, *, region: str, hooks: Sequence[InboundHook] = ()
) -> Message | None:
    """Store one part; when the group is complete, turn it into a received message (returned)."""
    if not tx.add_fragment(fragment):
        return None  # this part of this group is already stored
    group = fragment.group
    fragments = tx.group_fragments(group)
    if len(fragments) < group.total:
        return None
    return _complete(tx, group, fragments, region=region, incomplete=False, hooks=hooks)


def expire_groups(
    tx: StoreTx, started_before: datetime, *, region: str, hooks: Sequence[InboundHook] = ()
) -> list[Message]:
    """Deliver every group whose first part arrived at or before ``started_before``, as incomplete."""
    delivered = []
    for group in tx.groups_started_before(started_before):
        fragments = tx.group_fragments(group)
        if fragments:
            delivered.append(_complete(tx, group, fragments, region=region, incomplete=True, hooks=hooks))
    return delivered


def _complete(
    tx: StoreTx,
    group: FragmentGroup,
    fragments: list[Fragment],
    *,
    region: str,
    incomplete: bool,
    hooks: Sequence[InboundHook] = (),
) -> Message:
    _, _, missing = join_fragments(fragments)
    ordered = sorted(fragments, key=lambda f: f.seq)
    pieces = [
        ReceivedPiece(f.modem, f.sender_raw, f.text, f.encoding, f.pdu_hex, f.received_at, f.seq)
        for f in ordered
    ]
    message = record_received(
        tx, pieces, region=region, incomplete=incomplete or missing, expected_parts=group.total, hooks=hooks
    )
    tx.delete_group(group)
    return message
