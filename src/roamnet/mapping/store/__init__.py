"""Mapping stores: the interface (etcd's data model) and its backends."""

from roamnet.mapping.store.base import CasConflict, Compacted, Conflicted, Event, KeyValue, Lease, LeaseNotFound, Store
from roamnet.mapping.store.memory import MemoryStore

__all__ = ["CasConflict", "Compacted", "Conflicted", "Event", "KeyValue", "Lease", "LeaseNotFound", "MemoryStore",
           "Store"]
