"""What an NVE agent may do with the mapping, and nothing more: read a snapshot, read its part of the
process's view of the mapping and be told what each change touched (view.py), report a move, publish
its status (on its lease, when it has one: liveness.py).

An agent holds a `MappingClient`, never the store or the mapping system itself: the seam at which
an agent becomes a process of its own (the client then talks to the shared store, e.g. etcd).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from roamnet.mapping.liveness import StatusLease
from roamnet.mapping.records import Binding, Migration, NveStatus, Snapshot
from roamnet.mapping.system import ANNOUNCED, PORT_UP, MappingSystem, MoveRefused, Refused
from roamnet.mapping.view import MappingView, Touched

__all__ = ["ANNOUNCED", "PORT_UP", "MappingClient", "MoveRefused", "Refused"]


class MappingClient:
    """`status_lease`: publish the agent's status on that lease (its liveness; an agent process has
    one); without it, a plain write (agents in threads of one process, unit tests)."""

    def __init__(self, system: MappingSystem, status_lease: StatusLease | None = None):
        self._system = system
        self._status_lease = status_lease

    def snapshot(self) -> Snapshot:
        return self._system.snapshot()

    def follow(self, fn: Callable[[Touched], None], owner: str = "") -> Callable[[], None]:
        """Call `fn(touched)` after every batch of mapping changes the process's agents' view applies
        (only to note and wake: it runs under the view's lock); returns the function that stops it
        (and forgets what `owner` wanted watched)."""
        feed = self._system.agent_feed
        unsubscribe = feed.subscribe(fn)

        def unfollow() -> None:
            unsubscribe()
            if owner:
                feed.want(owner, ())
        return unfollow

    def read(self, fn: Callable[[MappingView], object], owner: str = "",
             wants: Callable[[MappingView], Iterable[str]] | None = None):
        """`fn(view)` on the process's agents' view of the mapping, caught up with the store, under its
        lock (`fn` copies what it keeps: nve/interest.py's `project`). `wants(view)`: the store prefixes
        `owner` needs (nve/interest.py `watched`): the view watches and holds them before `fn` runs, and
        the store sends the process nothing that no owner wants (view.py)."""
        return self._system.agent_feed.read(fn, owner, wants)

    def report_move(self, iface_id: str, nve: str, by: str = ANNOUNCED) -> tuple[Binding, bool]:
        """`iface_id` arrived on `nve` (`by`: its port came up, or it announced itself). Raises
        MoveRefused (Refused: the mobility rules said no)."""
        return self._system.report_move(iface_id, nve, by)

    def set_detached(self, iface_id: str, nve: str, detached: bool) -> bool:
        """`nve`, where `iface_id` is bound, has (no) port up for it."""
        return self._system.set_detached(iface_id, nve, detached)

    def publish_status(self, status: NveStatus) -> None:
        if self._status_lease is not None:
            self._status_lease.publish(status)
        else:
            self._system.statuses.publish(status)

    def now(self) -> float:
        """The mapping's clock (wall clock): what migration deadlines are compared with."""
        return self._system.clock()

    def expire(self, nve: str) -> list[Migration]:
        """End the moves to `nve` past their deadline: roll back the prepared ones (never activated), complete
        the activated ones (never completed); returns them as they were (`MappingSystem.expire`)."""
        return self._system.expire(dst=nve)
