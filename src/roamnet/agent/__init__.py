"""The agent of one NVE (or of a hypervisor switch): follows the mapping through a `MappingClient`,
reconciles its kernel, reports moves and publishes its status. Never imports `lab`."""
