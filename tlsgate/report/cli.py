"""`tlsgate report` and `tlsgate diff`: findings files in, a report and an exit code out.

Exit codes are the CI contract (tlsgate/report/exitcodes.py): 0 nothing fails the
gate, 1 something does, 2 the command could not judge (bad arguments, missing or
non-findings input, unwritable output), 3 a tlsgate bug. Without --fail-on,
`report` only renders and exits 0, so a job can write JUnit, SARIF and HTML
first and gate once at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from tlsgate.report import diff as diffing
from tlsgate.report import exitcodes, formats
from tlsgate.report.model import InputError, Reader
from tlsgate.report.summary import Summary
from tlsgate.sinks.findings import printable
from tlsgate.tls import mastg
from tlsgate.tls.severity import RANK

FORMATS = ("html", "junit", "sarif", "markdown", "json")
DEFAULT_GATE = "high"


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `report` and `diff` to tlsgate's command line."""
    report = subparsers.add_parser(
        "report",
        help="turn findings files into an HTML, JUnit, SARIF, Markdown or JSON report; gate with --fail-on",
        description="Exit 0: nothing fails the gate (or no --fail-on); 1: findings fail it; 2: usage or input error "
        "(nothing was judged); 3: internal error (a tlsgate bug). "
        "A finding fails when tlsgate blocked it or its severity is at least --fail-on, or, when --fail-on names a "
        "MASVS control or MASTG test, when it shows the app failing that control or test; 'passed' ones never do. "
        "Lines that are not findings are skipped with a warning naming FILE:LINE; every string from the file is "
        "escaped (control characters, bidi overrides, bytes that are not UTF-8), whatever the format.",
    )
    report.add_argument("findings", nargs="+", metavar="FINDINGS", help="findings JSON-lines file(s), e.g. one per device")
    report.add_argument("--format", choices=FORMATS, default="markdown", help="report format (default markdown)")
    report.add_argument("--out", default="-", metavar="PATH", help="where to write the report (default '-': standard output)")
    report.add_argument(
        "--fail-on",
        type=gate_argument,
        metavar="GATE",
        help=f"exit 1 if a finding was blocked or is at least this severe, or shows the app failing a named MASVS "
        f"control or MASTG test ({mastg.GATE_HELP}, e.g. high,MASVS-NETWORK-2); "
        f"without it the report's verdict uses {DEFAULT_GATE} and the exit code is 0",
    )
    report.add_argument("--title", default="tlsgate report", help="heading of the HTML report")
    report.set_defaults(func=cmd_report)

    diff = subparsers.add_parser(
        "diff",
        help="compare two runs' findings (e.g. two app builds): new, fixed and unchanged problems",
        description="Findings match by check, kind, host, deciding rule (its file name and line) and device "
        "(or app fingerprint), never by time or port. Exit 0: nothing new fails the gate (or no --fail-on); "
        "1 with --fail-on new:SEVERITY when a new problem fails that gate; 2: usage or input error; 3: internal error.",
    )
    diff.add_argument("base", metavar="BASE", help="findings of the earlier run (e.g. the last release)")
    diff.add_argument("new", metavar="NEW", help="findings of the run under test")
    diff.add_argument("--format", choices=("text", "json", "markdown"), default="text")
    diff.add_argument("--out", default="-", metavar="PATH", help="where to write it (default standard output)")
    diff.add_argument("--fail-on", metavar="new:SEVERITY", help="exit 1 if a NEW problem was blocked or is this severe")
    diff.add_argument("--hide-unchanged", action="store_true", help="text format: list only new and fixed problems")
    diff.set_defaults(func=cmd_diff)


def gate_argument(text: str) -> mastg.Gate:
    """`--fail-on` for argparse: a bad term is a usage error (exit 2) naming what is accepted."""
    try:
        return mastg.parse_gate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--fail-on: ")) from None


def _warn(message: str) -> None:
    print(f"tlsgate: {printable(message)}", file=sys.stderr)


def summarise(paths: list[str], threshold: int, warn: Callable[[str], None] = _warn, gate: mastg.Gate | None = None) -> Summary:
    """Read every file in one streaming pass into one summary; InputError on unusable input."""
    summary = Summary(threshold, gate)
    reader = Reader(warn)
    for path in paths:
        if Path(path).is_dir():
            raise InputError(f"{printable(path)}: is a directory; give the findings file(s) inside it")
        summary.add_all(reader.read(path))
        summary.sources.append(printable(path))
    if reader.skipped:
        warn(f"{reader.skipped} of {reader.lines} line(s) skipped (see the warnings above)")
    return summary


def render(summary: Summary, fmt: str, title: str = "tlsgate report") -> str:
    if fmt == "html":
        from tlsgate.report.html import html

        return html(summary, printable(title))
    if fmt == "junit":
        return formats.junit(summary)
    if fmt == "sarif":
        return json.dumps(formats.sarif(summary), indent=2, ensure_ascii=False) + "\n"
    if fmt == "markdown":
        return formats.markdown(summary)
    return formats.as_json(summary)


def _write(text: str, out: str) -> None:
    if out == "-":
        # UTF-8 whatever the locale says: a report is a file format, not console text.
        sys.stdout.flush()
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is None:
            sys.stdout.write(text)
        else:
            buffer.write(text.encode("utf-8"))
            buffer.flush()
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def cmd_report(args: argparse.Namespace) -> int:
    try:
        return _report(args)
    except BrokenPipeError:
        raise  # `| head`: the reader went away, tlsgate's main() ends quietly
    except Exception as exc:  # noqa: BLE001 - the error boundary: a crash must never read as the verdict (1)
        return exitcodes.internal_error(exc, "making the report")


def _report(args: argparse.Namespace) -> int:
    gate: mastg.Gate | None = args.fail_on
    threshold = gate.threshold if gate is not None and gate.threshold is not None else RANK[DEFAULT_GATE]
    try:
        summary = summarise(args.findings, threshold, gate=gate)
        _write(render(summary, args.format, args.title), args.out)
    except InputError as exc:
        _warn(str(exc))
        return exitcodes.USAGE
    except BrokenPipeError:
        raise
    except OSError as exc:
        _warn(f"{args.out}: cannot write the report: {exc.strerror or exc}")
        return exitcodes.USAGE
    verdict = "PASS" if summary.passed else "FAIL"
    where = "" if args.out == "-" else f" -> {args.out}"
    _warn(f"{verdict}: {summary.total} finding(s), {summary.failing} failing ({summary.gate.describe()}){where}")
    if args.fail_on is None:
        return exitcodes.PASS
    return exitcodes.PASS if summary.passed else exitcodes.FAIL


def cmd_diff(args: argparse.Namespace) -> int:
    try:
        return _diff(args)
    except BrokenPipeError:
        raise  # as for `report`
    except Exception as exc:  # noqa: BLE001 - the error boundary, as for `report`
        return exitcodes.internal_error(exc, "comparing the runs")


def _diff(args: argparse.Namespace) -> int:
    try:
        threshold = diffing.threshold_of(args.fail_on) if args.fail_on else RANK[DEFAULT_GATE]
    except ValueError as exc:
        _warn(str(exc))
        return exitcodes.USAGE
    try:
        base = summarise([args.base], threshold)
        new = summarise([args.new], threshold)
        result = diffing.compare(base, new)
        if args.format == "json":
            text = diffing.as_json(result)
        elif args.format == "markdown":
            text = diffing.as_markdown(result)
        else:
            text = diffing.as_text(result, show_unchanged=not args.hide_unchanged)
        _write(text, args.out)
    except InputError as exc:
        _warn(str(exc))
        return exitcodes.USAGE
    except BrokenPipeError:
        raise
    except OSError as exc:
        _warn(f"{args.out}: cannot write the diff: {exc.strerror or exc}")
        return exitcodes.USAGE
    _warn(f"{len(result.added)} new, {len(result.fixed)} fixed, {len(result.unchanged)} unchanged problem(s)")
    if args.fail_on is None:
        return exitcodes.PASS
    return exitcodes.FAIL if result.failing_new else exitcodes.PASS


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m tlsgate.report.cli`), for use before the commands are wired into `tlsgate`."""
    parser = argparse.ArgumentParser(prog="tlsgate")
    add_commands(parser.add_subparsers(metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
