"""`python -m roamnet.cli ...`: the `roamnet` command (the lab starts its NVE agents this way)."""

from roamnet.cli import main

main()
