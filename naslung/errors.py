"""The base class of errors a user can act on (a missing input, a bad file, an unreachable server).

The ``naslung`` CLI prints any :class:`UserError` as one line, ``naslung <command>: error: <message>``, with
exit status 2, as it does for ``FileNotFoundError`` and ``ValueError``; other exceptions keep their traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error whose message says which file, row or setting is wrong and what to do."""
