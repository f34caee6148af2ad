"""Raw RFC 6455 WebSocket clients for the benchmarks, run as a child process:

    python -m bench.ws_clients URL TOKEN CLIENTS TYPE KEY COUNT MAX_S

Each of CLIENTS connections does the handshake by hand, then parses the server's unmasked frames itself, so
what a benchmark measures is the daemon's fan-out, not a client library's per-message cost. It prints READY
once every client got its hello frame; each client then stamps every event of TYPE (keyed by the event's
``data[KEY]``) until it has COUNT of them or MAX_S seconds passed, and the process prints the list of
``[key, arrived, read]`` triples as JSON:

- ``arrived``: the kernel's receive timestamp of the bytes (SO_TIMESTAMPNS, socket(7)), i.e. when the event
  reached this client's socket. In the field every CRM client is its own process on its own machine; here one
  process holds all 100 connections on the one core the daemon leaves free, and reading them one after the
  other would add this process's own queueing (tens of µs per client per event) to the daemon's figure. When
  one read returns several frames they all get the timestamp of the newest segment (and the kernel merges
  unread segments, keeping the newest stamp), which can only overstate the latency: so this process does as
  little as it can while events arrive (reads are kept as bytes; frames are cut and parsed after the run,
  ``_decode``).
- ``read``: the wall clock when this process read the frame's last bytes (includes that queueing), reported
  alongside.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path

import trio


def _frame_length(buf: bytes) -> tuple[int, int] | None:
    """(header length, payload length) of the first frame in ``buf``, None until its length is known."""
    if len(buf) < 2:
        return None
    n = buf[1] & 0x7F
    if n < 126:
        return 2, n
    if n == 126:
        return (4, int.from_bytes(buf[2:4], "big")) if len(buf) >= 4 else None
    return (10, int.from_bytes(buf[2:10], "big")) if len(buf) >= 10 else None


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux value; SCM_TIMESTAMPNS is the same number
_ANCILLARY = socket.CMSG_SPACE(16)


async def _receive(sock) -> tuple[bytes, float]:
    """Bytes from the socket and the kernel's receive time of the newest of them (wall clock seconds)."""
    data, ancillary, _flags, _addr = await sock.recvmsg(65536, _ANCILLARY)
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
            seconds, nanoseconds = struct.unpack("qq", value[:16])
            return data, seconds + nanoseconds / 1e9
    return data, time.time()


async def _client(url: str, token: str, wanted: str, key: str, count: int, ready, arrivals: list) -> None:
    host, port_path = url.removeprefix("ws://").split(":", 1)
    port, path = port_path.split("/", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    nonce = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all((f"GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {nonce}\r\n"
                           "Sec-WebSocket-Version: 13\r\n"
                           f"Authorization: Bearer {token}\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += await stream.receive_some(65536)
    buf = buf.split(b"\r\n\r\n", 1)[1]
    sock = stream.socket
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    while (lengths := _frame_length(buf)) is None or len(buf) < sum(lengths):  # the hello frame
        data, _ = await _receive(sock)
        if not data:
            return
        buf += data
    ready()
    chunks = [(buf[sum(lengths):], time.time(), time.time())]
    arrivals.append(chunks)
    # While events arrive, only keep each read's bytes and stamps, and count the wanted events with one
    # C-level search. See _decode.
    needle = f'"type":"{wanted}"'.encode()  # the daemon's compact JSON; _decode checks the type again
    got, tail = _count_wanted(b"", chunks[0][0], needle)
    while got < count:
        data, arrived = await _receive(sock)
        if not data:
            return
        chunks.append((data, arrived, time.time()))
        found, tail = _count_wanted(tail, data, needle)
        got += found


def _count_wanted(tail: bytes, data: bytes, needle: bytes) -> tuple[int, bytes]:
    """Occurrences of ``needle`` that end in ``data`` (``tail``: the end of the previous reads, shorter than
    the needle, so nothing is counted twice), and the new tail."""
    joined = tail + data
    return joined.count(needle), joined[-(len(needle) - 1) :]


async def _main(url: str, token: str, clients: int, wanted: str, key: str, count: int, max_s: float) -> list:
    arrivals: list = []
    greeted = 0

    def ready() -> None:
        nonlocal greeted
        greeted += 1
        if greeted == clients:
            print("READY", flush=True)

    with trio.move_on_after(max_s):
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(_client, url, token, wanted, key, count, ready, arrivals)
    return _decode(arrivals, wanted, key)


def _decode(clients: list, wanted: str, key: str) -> list:
    """``[key, arrived, read]`` for each event of type ``wanted``, from the reads each client kept in the run.

    Frames are cut and their JSON parsed here, after the run: 100 clients each parsing a burst of 32 events
    (~3,200 ``json.loads``, and a copy of the unread rest of the buffer per frame) cost this process tens of
    ms while the daemon still fans the burst out. A client that falls that far behind reads two commits in one
    ``recvmsg`` (or the kernel has merged them in its queue), and the earlier commit's events then carry the
    later one's receive timestamp: measured, 20-35 ms added to the daemon's figure for the clients read last.
    A frame gets the stamps of the read that completed it, as when it was parsed on arrival."""
    out = []
    for chunks in clients:
        buf, pos = b"", 0
        for data, arrived, read in chunks:
            buf = buf[pos:] + data
            pos = 0
            while (lengths := _frame_length(buf[pos : pos + 10])) and len(buf) - pos >= sum(lengths):
                head, n = lengths
                payload = buf[pos + head:pos + head + n]
                pos += head + n
                if b'"type"' in payload:
                    event = json.loads(payload)
                    if event.get("type") == wanted:
                        out.append((event["data"].get(key), arrived, read))
    return out


ROOT = str(Path(__file__).resolve().parents[1])  # the child's working directory: `bench` importable


def command(url: str, token: str, clients: int, wanted: str, key: str, count: int, max_s: float) -> list[str]:
    """The argv that runs this module as a child process (start it with ``cwd=ROOT``)."""
    return [sys.executable, "-m", "bench.ws_clients", url, token, str(clients), wanted, key, str(count),
            str(max_s)]


if __name__ == "__main__":
    url, token, clients, wanted, key, count, max_s = sys.argv[1:8]
    result = trio.run(_main, url, token, int(clients), wanted, key, int(count), float(max_s))
    json.dump(result, sys.stdout)
