"""Errors of the simulator itself (never sent over the wire as fal's own)."""

from __future__ import annotations


class FalsimError(Exception):
    """Base of every error raised by `falsim`."""


class SimConfigError(FalsimError, ValueError):
    """A setting has a value the simulator cannot run with."""
