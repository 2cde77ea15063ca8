"""The mapping system: records and their codec, pure rules, the system over a store, the agents' client."""
