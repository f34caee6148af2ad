"""Simulated USB boxes served from another process, reached through a pyusb backend over a Unix socket.

Why: a real box's frames come from the kernel (libusb releases the GIL while a transfer waits), so the
gateway's process spends nothing on the exchange and the box.  Simulated in the gateway's own process
(``simulators/usb_box.py``), every 20 ms frame of every line is generated there, by the reader thread,
holding the GIL, and the daemon's event loop and store thread queue behind 32 lines of simulated
exchange.  The benchmarks run the boxes in a *box farm* process instead: the gateway process runs its real
driver on :class:`RemoteUsbBackend`, an ordinary ``usb.backend.IBackend`` whose every call is a request
on a socket (blocking, GIL released while it waits, as a libusb transfer is), and the farm runs each
box's :class:`~simulators.usb_box.UsbBoxBackend` unchanged, one thread per connection (a paced bulk IN
read blocks there until its frame is due).

Wire format: each message is a 4-byte little-endian length and a pickle (both ends are this module, run
from one checkout on one host; the socket is created in a private temporary directory).  A connection
first names its target (``("box", name)`` or ``("control",)``), then carries request/response pairs:
``(method, args)`` -> ``("ok", value)`` or ``("error", kind, details)``.  Device handles stay in the farm
(the client holds their number).  USB errors cross with their text, libusb code and errno, so the driver
sees exactly what the local simulator raises (e.g. ENODEV after ``unplug``).

The control connection reaches the farm's objects by name (``line:NAME`` the PstnLine, ``box:NAME`` the
VoiceBox, ``backend:NAME``, and whatever a setup hook registers), for a harness to start calls and read
the records afterwards: ``farm.call("line:line00", "incoming_call", Caller(...), max_rings=1)``,
``farm.get("line:line00", "cid_data_ends")``.

    python -m simulators.usb_remote --socket PATH --lines line00,line01 [--country jp] [--setup MOD:FN]

serves one paced box per name (serial ``HCRM-0000``, ``HCRM-0001``, ... in order) until stdin closes.
"""

from __future__ import annotations

import argparse
import array
import errno
import importlib
import os
import pickle
import socket
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any

import usb.backend
import usb.core

_LEN = struct.Struct("<I")


# -- framing
def _send(sock: socket.socket, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_LEN.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the box farm closed the connection")
        buf += chunk
    return bytes(buf)


def _recv(sock: socket.socket) -> Any:
    (n,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    return pickle.loads(_recv_exact(sock, n))


def _error_reply(exc: BaseException) -> tuple:
    if isinstance(exc, usb.core.USBError):
        return ("error", "usb", (exc.strerror, exc.backend_error_code, exc.errno))
    if isinstance(exc, IndexError):  # pyusb probes descriptors until IndexError
        return ("error", "index", str(exc))
    return ("error", "other", f"{type(exc).__name__}: {exc}")


def _raise_reply(reply: tuple) -> None:
    _, kind, details = reply
    if kind == "usb":
        strerror, code, err = details
        raise usb.core.USBError(strerror, code, err)
    if kind == "index":
        raise IndexError(details)
    raise RuntimeError(f"box farm: {details}")


# -- the farm's side
class BoxFarm:
    """Serves ``backends`` (name -> UsbBoxBackend) and ``objects`` (name -> anything) on a Unix socket."""

    def __init__(self, path: str, backends: dict[str, Any], objects: dict[str, Any]) -> None:
        self.path = path
        self.backends = backends
        self.objects = objects
        self._handles: dict[int, Any] = {}
        self._next_handle = 1
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(256)

    def serve_forever(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                hello = _recv(conn)
                if hello[0] == "box":
                    backend = self.backends[hello[1]]
                    handler: Callable[[str, tuple], Any] = lambda m, a: self._box_call(backend, m, a)  # noqa: E731
                else:
                    handler = self._control_call
                _send(conn, ("ok", None))
                while True:
                    method, args = _recv(conn)
                    try:
                        reply = ("ok", handler(method, args))
                    except Exception as exc:  # the client re-raises it
                        reply = _error_reply(exc)
                    _send(conn, reply)
            except (ConnectionError, EOFError, OSError):
                return

    def _box_call(self, backend: Any, method: str, args: tuple) -> Any:
        if method == "open_device":
            handle = backend.open_device(*args)
            with self._lock:
                key, self._next_handle = self._next_handle, self._next_handle + 1
                self._handles[key] = handle
            return key
        if method in _HANDLE_METHODS:
            with self._lock:
                handles = self._handles
                handle = handles.pop(args[0]) if method == "close_device" else handles[args[0]]
            args = (handle, *args[1:])
        if method == "bulk_read":
            handle, ep, intf, size, timeout = args
            buff = array.array("B", bytes(size))
            n = backend.bulk_read(handle, ep, intf, buff, timeout)
            return buff[:n].tobytes()
        if method == "ctrl_transfer":
            handle, request_type, request, value, index, data, timeout = args
            if request_type & 0x80:  # IN: ``data`` is the length to read
                buff = array.array("B", bytes(data))
                n = backend.ctrl_transfer(handle, request_type, request, value, index, buff, timeout)
                return buff[:n].tobytes()
            return backend.ctrl_transfer(handle, request_type, request, value, index,
                                         array.array("B", data), timeout)
        return getattr(backend, method)(*args)

    def _control_call(self, method: str, args: tuple) -> Any:
        if method == "get":
            target, attr = args
            return getattr(self.objects[target], attr)
        if method == "call":
            target, attr, call_args, kwargs = args
            return getattr(self.objects[target], attr)(*call_args, **kwargs)
        raise ValueError(f"unknown control request {method!r}")


_HANDLE_METHODS = frozenset({
    "close_device", "set_configuration", "get_configuration", "set_interface_altsetting",
    "claim_interface", "release_interface", "is_kernel_driver_active", "detach_kernel_driver",
    "attach_kernel_driver", "clear_halt", "reset_device", "bulk_write", "bulk_read", "ctrl_transfer",
})


# -- the gateway's side
class _Pool:
    """Connections to one farm target; a caller takes one for a request (a paced read blocks its own)."""

    def __init__(self, path: str, hello: tuple) -> None:
        self.path, self.hello = path, hello
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

    def request(self, method: str, args: tuple) -> Any:
        with self._lock:
            sock = self._idle.pop() if self._idle else None
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.path)
            _send(sock, self.hello)
            _recv(sock)
        try:
            _send(sock, (method, args))
            reply = _recv(sock)
        except BaseException:
            sock.close()
            raise
        with self._lock:
            self._idle.append(sock)
        if reply[0] != "ok":
            _raise_reply(reply)
        return reply[1]

    def close(self) -> None:
        with self._lock:
            for sock in self._idle:
                sock.close()
            self._idle.clear()


class _RemoteHandle:
    def __init__(self, key: int) -> None:
        self.key = key


class RemoteUsbBackend(usb.backend.IBackend):
    """A pyusb backend for the farm's box ``name`` (see the module docstring)."""

    def __init__(self, path: str, name: str) -> None:
        self.name = name
        self._pool = _Pool(path, ("box", name))

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return self._pool.request(method, args)
        except OSError as exc:  # the farm is gone: to the driver, the device is
            if isinstance(exc, usb.core.USBError):
                raise
            raise usb.core.USBError(f"No such device (box farm: {exc})", -4, errno.ENODEV) from None

    def close(self) -> None:
        self._pool.close()

    def enumerate_devices(self):
        return self._call("enumerate_devices")

    def get_parent(self, dev):
        return None

    def get_device_descriptor(self, dev):
        return self._call("get_device_descriptor", dev)

    def get_configuration_descriptor(self, dev, config):
        return self._call("get_configuration_descriptor", dev, config)

    def get_interface_descriptor(self, dev, intf, alt, config):
        return self._call("get_interface_descriptor", dev, intf, alt, config)

    def get_endpoint_descriptor(self, dev, ep, intf, alt, config):
        return self._call("get_endpoint_descriptor", dev, ep, intf, alt, config)

    def open_device(self, dev):
        return _RemoteHandle(self._call("open_device", dev))

    def close_device(self, dev_handle):
        try:
            self._call("close_device", dev_handle.key)
        except usb.core.USBError:
            pass  # closing a handle of a device that is gone

    def set_configuration(self, dev_handle, config_value):
        self._call("set_configuration", dev_handle.key, config_value)

    def get_configuration(self, dev_handle):
        return self._call("get_configuration", dev_handle.key)

    def set_interface_altsetting(self, dev_handle, intf, altsetting):
        self._call("set_interface_altsetting", dev_handle.key, intf, altsetting)

    def claim_interface(self, dev_handle, intf):
        self._call("claim_interface", dev_handle.key, intf)

    def release_interface(self, dev_handle, intf):
        self._call("release_interface", dev_handle.key, intf)

    def is_kernel_driver_active(self, dev_handle, intf):
        return self._call("is_kernel_driver_active", dev_handle.key, intf)

    def detach_kernel_driver(self, dev_handle, intf):
        self._call("detach_kernel_driver", dev_handle.key, intf)

    def attach_kernel_driver(self, dev_handle, intf):
        self._call("attach_kernel_driver", dev_handle.key, intf)

    def clear_halt(self, dev_handle, ep):
        self._call("clear_halt", dev_handle.key, ep)

    def reset_device(self, dev_handle):
        self._call("reset_device", dev_handle.key)

    def bulk_write(self, dev_handle, ep, intf, data, timeout):
        return self._call("bulk_write", dev_handle.key, ep, intf, bytes(data), timeout)

    def bulk_read(self, dev_handle, ep, intf, buff, timeout):
        data = self._call("bulk_read", dev_handle.key, ep, intf, len(buff), timeout)
        buff[: len(data)] = array.array("B", data)
        return len(data)

    def ctrl_transfer(self, dev_handle, bmRequestType, bmRequest, wValue, wIndex, data, timeout):
        if bmRequestType & 0x80:
            got = self._call("ctrl_transfer", dev_handle.key, bmRequestType, bmRequest, wValue, wIndex,
                             len(data), timeout)
            data[: len(got)] = array.array("B", got)
            return len(got)
        return self._call("ctrl_transfer", dev_handle.key, bmRequestType, bmRequest, wValue, wIndex,
                          bytes(data), timeout)


class FarmControl:
    """The control connection: ``get(target, attr)`` and ``call(target, method, *args, **kwargs)``."""

    def __init__(self, path: str) -> None:
        self._pool = _Pool(path, ("control",))

    def get(self, target: str, attr: str) -> Any:
        return self._pool.request("get", (target, attr))

    def call(self, target: str, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._pool.request("call", (target, method, args, kwargs))

    def close(self) -> None:
        self._pool.close()


# -- the farm process
def build_farm(path: str, names: list[str], *, country: str = "jp", paced: bool = True,
               setup: str | None = None) -> BoxFarm:
    """One paced box and exchange line per name; ``setup`` ("module:function") is called with
    ``(backends, objects)`` to add instrumentation (e.g. a benchmark's frame clocks) before serving."""
    from simulators.pstn_line import PstnLine
    from simulators.usb_box import make_box

    backends: dict[str, Any] = {}
    objects: dict[str, Any] = {}
    for i, name in enumerate(names):
        line = PstnLine(country)
        backend = make_box(line, serial=f"HCRM-{i:04d}", paced=paced)
        backends[name] = backend
        objects[f"line:{name}"], objects[f"box:{name}"] = line, backend.box
        objects[f"backend:{name}"] = backend
    if setup:
        module, _, fn = setup.partition(":")
        getattr(importlib.import_module(module), fn)(backends, objects)
    return BoxFarm(path, backends, objects)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simulators.usb_remote", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--lines", required=True, help="comma-separated line names")
    parser.add_argument("--country", default="jp")
    parser.add_argument("--unpaced", action="store_true")
    parser.add_argument("--setup", help="module:function called with (backends, objects)")
    args = parser.parse_args(argv)
    farm = build_farm(args.socket, args.lines.split(","), country=args.country, paced=not args.unpaced,
                      setup=args.setup)
    threading.Thread(target=farm.serve_forever, daemon=True).start()
    print("READY", flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or exits)
    farm.close()
    try:
        os.unlink(args.socket)
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
