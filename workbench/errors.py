"""The workbench's errors: one small hierarchy.

Every error says what was expected, what came, and how to fix it. Catch ``WorkbenchError`` to
catch them all; each also derives from the built-in exception a Python user would expect
(``KeyError`` for an unknown name, ``ValueError`` for bad input), so existing ``except`` clauses
keep working.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base class of every error raised by the workbench."""


class UnsupportedModelError(WorkbenchError, ValueError):
    """The model's architecture (``config.model_type``) has no adapter."""


class HookNameError(WorkbenchError, KeyError):
    """A hook name that does not exist on this model."""

    def __str__(self) -> str:  # KeyError would quote the message; show it as written
        return str(self.args[0]) if self.args else ""


class HookShapeError(WorkbenchError, ValueError):
    """A hook function returned a tensor of the wrong shape (or not a tensor)."""


class InputError(WorkbenchError, ValueError):
    """Input the model cannot run on: empty, too long, ids outside the vocabulary, bad mask."""


class TokenizerError(WorkbenchError, ValueError):
    """A tokenizer is needed (or a string is not one token) and the request cannot be met."""


class UnverifiedFamilyWarning(UserWarning):
    """A model of a family with no tested adapter was wrapped through the generic path: its
    structure was discovered and checked on a probe prompt, but the family is not in the
    parity tests."""
