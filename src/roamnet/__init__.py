"""roamnet: VM mobility over a VXLAN overlay driven by a mapping system."""

__version__ = "0.1.0"
