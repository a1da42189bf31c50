"""The one exception type for bad input, and the CLI wrapper that turns it into one sentence.

Library code raises `UserError` naming the file, field or request at fault; command-line entry
points wrap their work in `run_cli`, which prints that sentence and exits non-zero, no traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input from the user: a file, field, option or request that cannot be used.

    The message is a complete sentence that names what is at fault.
    """

    exit_code = 2


def run_cli(main: Callable[[], int | None]) -> int:
    """Run a CLI body: `UserError` becomes `error: <message>` on stderr and exit code 2.

    Args:
        main: the command body; returns an exit code or None for 0.

    Returns:
        The process exit code.
    """
    try:
        code = main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)
