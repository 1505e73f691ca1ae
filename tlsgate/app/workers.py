"""N tlsgate processes behind one listening address, for machines with more than one core.

mitmproxy runs on one core. Each worker is a full tlsgate process; all of them
bind the same port with SO_REUSEPORT and the kernel spreads new connections
across them. Unlike a TCP load balancer in front, this keeps every client's
real address, which device names and the public-client guard depend on.
The CA is created once by the supervisor before the workers start; each
worker watches the policy files itself, so all enforce the same policy.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from tlsgate.report import exitcodes


def pick_port(host: str) -> int:
    """Workers must agree on one port, so port 0 is resolved once, here."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def supervise(argvs: Sequence[list[str]]) -> int:
    """Start the workers, pass SIGINT/SIGTERM on, and stop all if one dies: a silent half-capacity proxy helps nobody."""
    procs = [subprocess.Popen([sys.executable, "-m", "tlsgate", *argv], env=worker_env()) for argv in argvs]
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while procs:
        for proc in list(procs):
            if proc.poll() is None:
                continue
            procs.remove(proc)
            if not stopping:
                # A worker has no gate (--fail-on needs --workers 1): dying is never a verdict, so never 1.
                returncode = proc.returncode
                code = 128 - returncode if returncode < 0 else returncode if returncode > 1 else exitcodes.INTERNAL
                print(f"tlsgate: worker {proc.pid} exited ({proc.returncode}); stopping the others", file=sys.stderr)
                stop(signal.SIGTERM, None)
        time.sleep(0.2)
    return code if not stopping else 0


def worker_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}
