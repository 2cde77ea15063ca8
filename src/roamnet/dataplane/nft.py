"""nftables through libnftables' JSON API, in one network namespace, in-process.

libnftables (the library behind `nft`) is called through ctypes: a context made by a thread inside
the namespace keeps its netlink socket there, so one process can drive every NVE's namespace, and a
batch of commands is one kernel transaction (all or nothing). The Python binding Debian ships
(python3-nftables) does the same over the same library, but only for the system Python.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import threading

from roamnet.dataplane import netns
from roamnet.nve import claimants, underlay
from roamnet.nve.filters import BASE, EGRESS, FAMILY, INGRESS, TABLE, Table, counters, read_table
from roamnet.nve.underlay import Underlay, read_underlay

OUTPUT_HANDLE, OUTPUT_JSON = 1 << 3, 1 << 4


class NftError(OSError):
    pass


_lib = None
_lib_lock = threading.Lock()


def _library():
    global _lib
    with _lib_lock:
        if _lib is None:
            path = ctypes.util.find_library("nftables") or "libnftables.so.1"
            try:
                lib = ctypes.CDLL(path)
            except OSError as exc:
                raise NftError(f"libnftables not found ({exc}); install the nftables package") from exc
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            for fn in (lib.nft_ctx_get_output_buffer, lib.nft_ctx_get_error_buffer):
                fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_char_p
            _lib = lib
        return _lib


class Nft:
    """A libnftables context in namespace `ns` (JSON in and out). Thread-safe."""

    def __init__(self, ns: str):
        self.ns = ns
        self._lib = _library()
        self._lock = threading.Lock()

        def make() -> int:
            ctx = self._lib.nft_ctx_new(0)
            if not ctx:
                raise NftError(f"{ns}: nft_ctx_new failed")
            self._lib.nft_ctx_output_set_flags(ctx, OUTPUT_JSON | OUTPUT_HANDLE)
            self._lib.nft_ctx_buffer_output(ctx)
            self._lib.nft_ctx_buffer_error(ctx)
            # the netlink socket is opened on first use: use it here, inside the namespace
            self._run_in(ctx, '{"nftables": [{"list": {"tables": {"family": "bridge"}}}]}')
            return ctx

        self._ctx = netns.call_in(ns, make)

    def _run_in(self, ctx: int, text: str) -> str:
        rc = self._lib.nft_run_cmd_from_buffer(ctx, text.encode())
        out = (self._lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
        if rc != 0:
            err = (self._lib.nft_ctx_get_error_buffer(ctx) or b"").decode().strip()
            raise NftError(f"{self.ns}: nft: {err or 'failed'}")
        return out

    def run(self, commands: list[dict]) -> str:
        """Run `commands` (nftables JSON objects) as one transaction."""
        with self._lock:
            return self._run_in(self._ctx, json.dumps({"nftables": commands}))

    def list(self, what: str, **obj) -> dict | None:
        """`list <what>` (table, chains, map, chain, counters, ...) as JSON; None when it does not exist."""
        try:
            out = self.run([{"list": {what: obj}}])
        except NftError as exc:
            if "No such file or directory" in str(exc):
                return None
            raise
        return json.loads(out) if out else None

    def list_table(self, family: str, name: str) -> dict | None:
        """`list table` as JSON (every rule, with counters), or None when there is no such table."""
        return self.list("table", family=family, name=name)

    def close(self) -> None:
        with self._lock:
            if self._ctx:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = 0


# ---- our table, read back ----------------------------------------------------------------------

def read_table_briefly(nft) -> Table:
    """What an agent needs of its table, cheaply: chain names, the maps, the base chains' rules and the
    named counters, without every port chain's rules (`nft.Nft`-like `list`; reading the whole table
    of 64 ports took 44 ms, this a few, see benchmarks/filters.py)."""
    items: list = []
    for what, obj in (("chains", {"family": FAMILY}), ("map", {"family": FAMILY, "table": TABLE, "name": INGRESS}),
                      ("map", {"family": FAMILY, "table": TABLE, "name": EGRESS}),
                      ("counters", {"family": FAMILY}),
                      *(("chain", {"family": FAMILY, "table": TABLE, "name": hook}) for hook in BASE)):
        got = nft.list(what, **obj)  # None: missing (then base_ok is False and the plan remakes it)
        items += [i for i in (got or {}).get("nftables", []) if "metainfo" not in i]
    return read_table({"nftables": items})


def read_filter_table(nft: Nft) -> Table:
    """The whole table (every chain's rules, with counters) as it is now."""
    return read_table(nft.list_table(FAMILY, TABLE))


def read_underlay_table(nft: Nft) -> tuple[Underlay, int]:
    """Our `ip roamnet` table (the VXLAN guard) and the packets it dropped."""
    return read_underlay(nft.list_table(underlay.FAMILY, underlay.TABLE))


def read_claimants_table(nft: Nft) -> tuple[claimants.Claimants, int]:
    """Our `netdev roamnet` table (claimant ports) and the packets it blocked."""
    return claimants.read_claimants(nft.list_table(claimants.FAMILY, claimants.TABLE))


def filter_counters(ns: str) -> dict[str, int]:
    """The NVE's filter totals by kind (nve.filters.TOTALS, and the VXLAN guard's drops), read in
    namespace `ns` by a context of its own (no agent's): what the lab's reports and inspect show."""
    nft = Nft(ns)
    try:
        return {**counters(read_filter_table(nft)), underlay.VXLAN_FOREIGN: read_underlay_table(nft)[1],
                claimants.CLAIM_BLOCKED: read_claimants_table(nft)[1]}
    finally:
        nft.close()

