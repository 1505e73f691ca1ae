"""tlsgate's exit codes: the contract a CI job reads, the same for `run`, `report` and `diff`.

1 means one thing only, "the gate failed", so a job can tell a verdict from a
run that never produced one. A crash used to be Python's 1 too; now the
commands catch it and say 3.
"""

from __future__ import annotations

import os
import sys
import traceback

from tlsgate.sinks.findings import printable

PASS = 0  # nothing fails the gate (or there is no gate)
FAIL = 1  # findings fail the gate: the verdict, and nothing else
USAGE = 2  # could not judge: bad arguments, missing or unreadable input, a policy with errors, unwritable output, a port in use
INTERNAL = 3  # a tlsgate bug: an unexpected exception, said in one line

SUMMARY = "exit codes: 0 pass, 1 the gate failed, 2 usage or input error (nothing was judged), 3 internal error (a tlsgate bug)"


def internal_error(exc: BaseException, doing: str) -> int:
    """One line on stderr for an unexpected exception, naming where it happened, and INTERNAL.

    No traceback by default (a report job's log is read by people who did not write tlsgate), but the
    innermost tlsgate frame, so a bug report can point at the line; TLSGATE_TRACEBACK=1 prints it all.
    """
    text = printable(str(exc))[:200]
    print(
        f"tlsgate: internal error while {doing}: {type(exc).__name__}: {text}{_where(exc)}. "
        "This is a tlsgate bug, please report it; exit 3 (not a verdict).",
        file=sys.stderr,
    )
    if os.environ.get("TLSGATE_TRACEBACK"):
        traceback.print_exception(exc, file=sys.stderr)
    return INTERNAL


def _where(exc: BaseException) -> str:
    """The innermost frame in tlsgate's own code (else the innermost at all), as `tlsgate/x/y.py:123`."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        path = frame.filename.replace("\\", "/")
        if "/tlsgate/" in path:
            return f" at tlsgate/{path.rsplit('/tlsgate/', 1)[1]}:{frame.lineno}"
    return f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
