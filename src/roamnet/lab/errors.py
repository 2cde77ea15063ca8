"""The lab's error: what a user did that the lab refuses, or what failed in it (message says which)."""


class LabError(Exception):
    pass
