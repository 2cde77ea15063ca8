"""The intent: topology and scenario models (pydantic), their cross-checks, YAML loading, and the
compilation of a topology into mapping records. No I/O beyond reading files."""
