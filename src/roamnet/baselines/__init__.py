"""Other control planes on the same kernel data plane, to measure roamnet against (FRR BGP-EVPN)."""
