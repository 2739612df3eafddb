"""The one base class of geomfilter's errors.

Every error geomfilter raises for something a user can fix (a bad file, option, spec, folder or
server) subclasses :class:`GeomfilterError` as well as the builtin it always was (``ValueError``,
``RuntimeError``, ...), so existing ``except ValueError`` code keeps working. Its message says what
is wrong and how to fix it; the CLI prints it as ``error: ...`` and exits with status 2. Anything
else that escapes is a bug and shows its traceback.
"""
from __future__ import annotations


class GeomfilterError(Exception):
    """Base class of the errors a user can fix; the message names the file, line, field or option."""
