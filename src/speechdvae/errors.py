"""The library's errors: every error a user can cause derives from `SpeechDVAEError`, so callers (the
command line among them) catch one class and show one clear message."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class SpeechDVAEError(Exception):
    """Base of every speechdvae error that a user can fix: its message alone says what went wrong."""


class UserError(SpeechDVAEError, ValueError):
    """A bad option or combination of options, found before any work starts."""


class MissingExtra(SpeechDVAEError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


@contextlib.contextmanager
def needs_extra(extra: str, purpose: str) -> Iterator[None]:
    """Imports of an optional dependency: an ImportError in the block becomes a MissingExtra naming the extra."""
    try:
        yield
    except ImportError as err:
        raise MissingExtra(
            f"{purpose} needs {err.name}, which is not installed: pip install 'speechdvae[{extra}]'"
        ) from err
