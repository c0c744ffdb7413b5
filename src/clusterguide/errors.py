"""The one exception type for mistakes a user can make.

Anything raised as :class:`UserError` is shown by the CLI as a single line on stderr with exit
code 2 and no traceback. Bugs stay ordinary exceptions so they keep their traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: bad name, bad number, missing or damaged file."""


class NameTakenError(UserError):
    """A cluster name that another cluster of the run already has (the web server answers 409)."""
