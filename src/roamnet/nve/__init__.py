"""Pure per-NVE logic: a mapping snapshot -> one NVE's desired state (L2 segments, VRFs, port filters,
a hypervisor switch), and the ordered changes that make a kernel hold it. Imports only `mapping`
and `names`."""
