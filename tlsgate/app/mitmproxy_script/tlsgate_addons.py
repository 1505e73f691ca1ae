"""tlsgate's add-ons for stock mitmproxy tools: `mitmdump -s "$(tlsgate script-path)" --set tlsgate_policy=...`.

So someone who lives in mitmdump or mitmweb sees tlsgate's verdicts on their own flows, with every
default mitmproxy add-on (replay, map_local, ...) that `tlsgate run` leaves out. mitmproxy loads this
file by path, not as part of the package, so it must import tlsgate from the Python it runs in; a
mitmdump of one environment given the script of another would quietly run that environment's tlsgate
(or none), so both cases stop here with what to run instead.
"""

from pathlib import Path

WANTED = Path(__file__).resolve().parents[2]  # the tlsgate package this file belongs to

try:
    import tlsgate
except ModuleNotFoundError as exc:
    if exc.name != "tlsgate":
        raise
    raise ImportError(
        "tlsgate is not installed in the Python environment this mitmproxy runs from: run the mitmdump that "
        "`pip install` of tlsgate put next to the `tlsgate` command (.venv/bin/mitmdump in a checkout)"
    ) from None

FOUND = Path(tlsgate.__file__).resolve().parent
if FOUND != WANTED:
    raise ImportError(
        f"this script belongs to the tlsgate in {WANTED}, but this mitmproxy's Python imports the one in {FOUND}: "
        "run `tlsgate script-path` and mitmdump from the same environment"
    )

from tlsgate.addons import make_addons  # noqa: E402 - only once it is the right tlsgate

addons = make_addons()
