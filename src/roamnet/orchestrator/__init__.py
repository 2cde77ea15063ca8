"""The orchestrator's side of a VM's move, through the mapping store alone (no lab, no daemon):
`moves` (a VM's interfaces and the make-before-break phases, with the convergence waits read from
the agents' statuses) and `libvirt` (libvirt's qemu hook: its events to those phases).

Imports only `mapping` and `names`; `cli/` composes it with a store, and the lab's `Moves` shares
its prepare."""
