"""Errors of the data layer."""

from __future__ import annotations


class ModelsError(Exception):
    """Base of every error raised by `models`."""


class NotFoundError(ModelsError):
    """The batch, job or image asked for does not exist."""


class InvalidTransitionError(ModelsError):
    """A caller asked for a move the state machine never allows (a programming error)."""
