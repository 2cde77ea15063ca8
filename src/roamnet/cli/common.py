"""What every command module shares: the consoles, `-f/--format`, the root check, errors, a lab daemon's
requests and the mapping store's options. click and the standard library only, at import time: `roamnet agent`
and `roamnet hook libvirt` import this, and run often (one agent per NVE; libvirtd runs the hook on every VM event).
"""

from __future__ import annotations

import os
import sys

import click

# httpx (the etcd store's client) imports its own command line, httpx._main, whenever rich and pygments are
# installed, as they are with roamnet: about 0.1 s and rich, in every `roamnet agent` and hook process, for a
# command roamnet never runs. Marked absent, httpx leaves it out (its `httpx.main` then says the CLI is missing).
sys.modules.setdefault("httpx._main", None)


class _Console:
    """A rich Console made when it is used (importing rich costs more than `roamnet agent` needs): each use
    makes one, for stdout or stderr, so the terminal's width (COLUMNS) is read then, as a Console reads it."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr

    def __getattr__(self, name: str):
        from rich.console import Console

        return getattr(Console(stderr=self._stderr), name)


out = _Console(stderr=False)
err = _Console(stderr=True)
FORMAT = click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]), default="table",
                      show_default=True, help="Output format.")


def _need_root() -> None:
    if os.geteuid() != 0:
        raise click.ClickException("the lab needs root (network namespaces, netlink)")


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc))


def _ask(lab_name: str, op: str, **args) -> object:
    """One request to a running lab's daemon (root only); its error becomes the command's."""
    from roamnet.lab.daemon import DaemonError, call

    _need_root()
    try:
        return call(lab_name, op, **args)
    except DaemonError as exc:
        _fail(exc)


def store_options(f=None, *, required: bool = True):
    """--store URL (or $ROAMNET_STORE) and the TLS files of an https store (or $ROAMNET_CACERT,
    $ROAMNET_CERT, $ROAMNET_KEY): what every command that talks to the mapping store directly takes
    (see `open_store`). `@store_options`, or `@store_options(required=False)` for a command that
    needs the store only in some of its forms."""
    if f is None:
        return lambda g: store_options(g, required=required)
    for opt in reversed([
        click.option("--store", "store_url", envvar="ROAMNET_STORE", required=required, show_envvar=True,
                     help="The mapping store (etcd): unix:///path/to/etcd.sock, or https://host:port with "
                          "--cacert/--cert/--key."),
        click.option("--cacert", type=click.Path(exists=True, dir_okay=False), envvar="ROAMNET_CACERT", show_envvar=True,
                     help="CA certificate of an https store."),
        click.option("--cert", type=click.Path(exists=True, dir_okay=False), envvar="ROAMNET_CERT", show_envvar=True,
                     help="Client certificate for an https store."),
        click.option("--key", type=click.Path(exists=True, dir_okay=False), envvar="ROAMNET_KEY", show_envvar=True,
                     help="Client key for an https store."),
    ]):
        f = opt(f)
    return f


def _close(store) -> None:
    """Close a store's connections (an embedded store has none)."""
    close = getattr(store, "close", None)
    if close is not None:
        close()


def open_store(store_url: str, cacert: str | None = None, cert: str | None = None, key: str | None = None):
    """The etcd store at `store_url`, reachable (or a ClickException that says why not)."""
    from roamnet.mapping.store.etcd import EtcdStore, StoreError

    try:
        store = EtcdStore(store_url, cacert=cacert, cert=cert, key=key)
        store.revision  # noqa: B018 - reachable, or a clear error now
    except (ValueError, StoreError) as exc:
        _fail(exc)
    return store

