"""Strict DMP simulator (ITI-41/18/43/57, TD0.2) for tests and the demo."""

from .server import DmpSimulator

__all__ = ["DmpSimulator"]
