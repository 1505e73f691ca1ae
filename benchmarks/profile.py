"""Where tlsgate's CPU goes under new-connection load: a py-spy profile, summarised by group.

    python3 -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install py-spy     # not a project dependency
    .venv/bin/python benchmarks/profile.py --py-spy /tmp/pyspy/bin/py-spy
    .venv/bin/python benchmarks/profile.py --py-spy /tmp/pyspy/bin/py-spy --master dump   # before the lean master
    .venv/bin/python benchmarks/profile.py --py-spy /tmp/pyspy/bin/py-spy --master walk   # before the dispatch table

Upstream and proxy as in benchmarks/run.py (nginx over TLS on loopback, default
policy, warn log level); hey opens a new TLS connection per request for the
whole recording. `--master dump` serves with mitmproxy's DumpMaster (every
default add-on) instead of tlsgate's lean master, so the two profiles differ in
that alone; `--master walk` keeps the lean master's add-ons but dispatches
with mitmproxy's AddonManager (before `tlsgate/app/dispatch.py`). `--keepalive`
reuses connections instead. Samples are stacks of every thread of the proxy, minus those waiting
in epoll (py-spy counts epoll_wait as active: the metrics thread waits there all
the time); "self" is the leaf frame, "total" any frame on the stack.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.benchpolicies import noisy_policy  # noqa: E402
from benchmarks.run import bench_upstream, have_tools, hey, tlsgate_proxy  # noqa: E402

# `tlsgate run` with the DumpMaster it used before the lean master, for a like-for-like "before" profile.
DUMP_MASTER = """
import sys
import tlsgate.app.master as lean
from mitmproxy.tools.dump import DumpMaster
lean.LeanMaster = lambda opts: DumpMaster(opts, with_termlog=True, with_dumper=False)
from tlsgate.app.cli import main
sys.exit(main())
"""
# The lean master with mitmproxy's own AddonManager (a walk over every add-on per event): "before" the dispatch table.
WALK_MASTER = """
import sys
import tlsgate.app.master as lean
from mitmproxy.addonmanager import AddonManager
lean.DispatchTable = AddonManager
from tlsgate.app.cli import main
sys.exit(main())
"""

# First match wins, tested against the frame's file as py-spy shows it ("mitmproxy/addonmanager.py", "contextlib.py").
GROUPS: list[tuple[str, re.Pattern[str]]] = [
    (
        "event dispatch (mitmproxy addonmanager, hooks; tlsgate's table)",
        re.compile(r"^mitmproxy/(addonmanager|hooks|eventsequence)\.py|^tlsgate/app/dispatch\.py"),
    ),
    ("tlsgate add-ons and checks (tlsgate/)", re.compile(r"^tlsgate/(?!app/|__main__)")),  # start-up frames: on every stack
    (
        "TLS (pyOpenSSL, cryptography, mitmproxy tls)",
        re.compile(r"^(OpenSSL|cryptography)/|^mitmproxy/(certs|net/tls|addons/tlsconfig|proxy/layers/tls)"),
    ),
    ("mitmproxy proxy core (layers, server, http)", re.compile(r"^mitmproxy/")),
    ("Python stdlib (asyncio, contextlib, ...)", re.compile(r"^(asyncio/|<frozen|[A-Za-z_]+\.py$)")),
]
# "other" is the start-up frames below the event loop (tlsgate/app, `python -c`): stdlib time under them alone is
# the event loop's own (select, scheduling) and stays with the stdlib.
STDLIB = GROUPS[-1][0]

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*):?(?P<line>\d*)\)$")


def group_of(frame: str) -> str:
    match = FRAME.match(frame)
    path = match.group("file") if match else frame
    for name, pattern in GROUPS:
        if pattern.search(path):
            return name
    return "other"


def short(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    path = match.group("file")
    for marker in ("site-packages/", "/work/main/", "lib/python3.12/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match.group('func')} ({path})"


def summarise(raw: Path, top: int = 15) -> str:
    """Self and total shares by group and by function, from py-spy's raw (collapsed stacks) output."""
    samples = waiting = 0
    self_fn: collections.Counter[str] = collections.Counter()
    total_fn: collections.Counter[str] = collections.Counter()
    self_group: collections.Counter[str] = collections.Counter()
    charged: collections.Counter[str] = collections.Counter()  # stdlib leaves charged to their nearest caller outside it
    total_group: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if frames[-1].startswith("EpollSelector.select "):  # waiting for I/O (py-spy counts epoll_wait as active)
            waiting += count
            continue
        samples += count
        self_fn[short(frames[-1])] += count
        self_group[group_of(frames[-1])] += count
        groups = [group_of(f) for f in frames]
        charged[next((g for g in reversed(groups) if g not in (STDLIB, "other")), STDLIB)] += count
        for name in {short(f) for f in frames}:
            total_fn[name] += count
        for name in {group_of(f) for f in frames}:
            total_group[name] += count
    if not samples:
        return "no samples"

    def pct(n: int) -> str:
        return f"{100 * n / samples:.1f}%"

    out = [f"{samples} samples on CPU ({waiting} more waiting in epoll, left out)", ""]
    out += ["| group | self | self, stdlib charged to its caller | total |"]
    out += ["| --- | ---: | ---: | ---: |"]
    for g in [n for n, _ in GROUPS] + ["other"]:
        out.append(f"| {g} | {pct(self_group[g])} | {pct(charged[g])} | {pct(total_group[g])} |")
    out += ["", "| top self | share |", "| --- | ---: |"]
    out += [f"| `{f}` | {pct(n)} |" for f, n in self_fn.most_common(top)]
    out += ["", "| top total | share |", "| --- | ---: |"]
    out += [f"| `{f}` | {pct(n)} |" for f, n in total_fn.most_common(top + 10)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy binary (PyPI: py-spy)")
    parser.add_argument("--master", choices=("lean", "walk", "dump"), default="lean")
    parser.add_argument("--keepalive", action="store_true", help="reuse connections (default: one per request)")
    parser.add_argument("--noisy", action="store_true", help="the noisy policy (benchpolicies.py): a finding per connection")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw output here")
    parser.add_argument("--summary", type=Path, help="also write the summary here")
    parser.add_argument("--summarise", type=Path, help="only summarise an existing raw file")
    args = parser.parse_args()
    if args.summarise:
        print(summarise(args.summarise))
        return 0
    if not have_tools("nginx", "hey"):
        return 2
    work, _chain, root, upstream, up_port = bench_upstream("tlsgate-profile-")
    url = f"https://localhost:{up_port}/"
    extra: list[str] = []
    if args.noisy:
        (work / "noisy.yaml").write_text(noisy_policy())
        extra = ["--policy", str(work / "noisy.yaml")]
    proxy = tlsgate_proxy(work, f"tlsgate-{args.master}", root, [f"localhost:{up_port}:127.0.0.1"], *extra)
    if args.master != "lean":  # python -c CODE run ... (instead of python -m tlsgate run ...)
        proxy.argv[1:3] = ["-c", DUMP_MASTER if args.master == "dump" else WALK_MASTER]
    raw = args.raw or work / "profile.txt"
    try:
        proxy.start(work)
        hey(proxy.port, url, 200, args.concurrency, True)  # warm up: leaf certificates, caches
        load = subprocess.Popen(
            ["hey", "-z", f"{args.seconds + 10}s", "-c", str(args.concurrency)]
            + ([] if args.keepalive else ["-disable-keepalive"])
            + ["-x", f"http://127.0.0.1:{proxy.port}", url],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(2)  # let the load reach a steady state before sampling
        subprocess.run(
            [args.py_spy, "record", "--format", "raw", "-o", str(raw), "-d", str(args.seconds), "-p", str(proxy.pid)],
            check=True,
            capture_output=True,
            timeout=args.seconds + 60,
        )
        load.terminate()
        load.wait(20)
        text = summarise(raw)
    finally:
        proxy.stop()
        upstream.terminate()
        upstream.wait(10)
        shutil.rmtree(work, ignore_errors=True)  # keep the raw profile with --raw
    if args.summary:
        args.summary.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
