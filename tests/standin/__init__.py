"""A stand-in for a ComfyUI 0.3.64 worker, for tier-2 component tests (see README.md)."""

from .server import StandinComfy

__all__ = ["StandinComfy"]
