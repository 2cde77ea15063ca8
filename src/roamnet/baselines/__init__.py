"""Other control planes to measure roamnet against, driven by the lab as its `ControlPlane`: FRR
BGP-EVPN (evpn.py, on the same kernel data plane) and OVN (ovn.py, on Open vSwitch's userspace datapath)."""
