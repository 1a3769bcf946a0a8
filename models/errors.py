"""One exception type for every problem the user can fix.

The CLI prints `str(err)` as a single line and exits non-zero; anything else is a bug
and keeps its traceback.
"""


class LipsyncError(Exception):
    """A user-fixable problem: the message says what was expected, what was found, what to do."""

    exit_code = 2

    def __init__(self, what: str, expected: str, found: str, fix: str):
        self.what, self.expected, self.found, self.fix = what, expected, found, fix
        super().__init__(f"{what}: expected {expected}, found {found}; {fix}")


class EngineFailure(RuntimeError):
    """A live session died at run time (a sink's server went away for good, a worker crashed).
    The CLI prints it in one line and exits 1; the original exception is its __cause__."""

    exit_code = 1

    @classmethod
    def wrap(cls, where: str, e: BaseException) -> "EngineFailure":
        if isinstance(e, EngineFailure):
            return e
        err = cls(f"{where} failed: {type(e).__name__}: {e}")
        err.__cause__ = e
        return err
