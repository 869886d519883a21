"""reidbench: a distributed benchmark harness for CLIP-era person re-identification."""

__version__ = "0.1.0"
