"""Stand-in: DaCapo imports ``LabelList`` from here at import time and never uses it in tests."""


class LabelList:
    """Placeholder for fibsem_tools' ``LabelList``."""
