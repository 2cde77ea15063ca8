"""Working inside named network namespaces (/run/netns/NAME) from one process.

setns(2) on a network namespace changes only the calling thread, and a socket keeps the namespace it
was created in; so `call_in` runs a function in a short-lived thread that first enters the namespace.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from pyroute2 import netns as _netns

T = TypeVar("T")
NETNS_DIR = "/run/netns"


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def listing() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def create(name: str) -> None:
    if exists(name):
        raise FileExistsError(f"network namespace {name} already exists")
    _netns.create(name)


def remove(name: str) -> None:
    if exists(name):
        _netns.remove(name)


def call_in(name: str, fn: Callable[..., T], *args, **kwargs) -> T:
    """Run fn(*args, **kwargs) with the calling thread inside namespace `name`; return its result."""
    result: dict = {}

    def run() -> None:
        try:
            _netns.setns(name, flags=0)
            result["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    t = threading.Thread(target=run, name=f"netns:{name}", daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def socket_in(name: str, family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket that lives in namespace `name`."""
    return call_in(name, socket.socket, family, type_, proto)


def sysctl(name: str, key: str, value: str | int) -> None:
    """Write a per-namespace sysctl, e.g. sysctl(ns, 'net.ipv4.ip_forward', 1)."""

    def write() -> None:
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(str(value))

    call_in(name, write)


def command(name: str, argv: Sequence[str]) -> list[str]:
    """argv that runs `argv` inside namespace `name` (util-linux nsenter, like `ip netns exec`)."""
    nsenter = shutil.which("nsenter") or "nsenter"
    return [nsenter, f"--net={os.path.join(NETNS_DIR, name)}", "--", *argv]
