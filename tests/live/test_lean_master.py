"""`tlsgate run` on its lean master (tlsgate/app/master.py): the add-ons a real run loads, what it still does
(mitm.it, --set scripts=), and the message a dropped add-on's option gets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.harness import Tlsgate, curl
from tests.unit.test_lean_master import KEPT

# Prints the running master's add-on chain, so the test reads it from the real process.
CHAIN_SCRIPT = """
import json
from mitmproxy import ctx

def running():
    names = [type(a).__name__.lower() for a in ctx.master.addons.chain]
    print("ADDONS " + json.dumps(names), flush=True)
"""


def test_a_real_run_loads_only_the_kept_mitmproxy_addons(tmp_path: Path) -> None:
    script = tmp_path / "chain.py"
    script.write_text(CHAIN_SCRIPT)
    gate = Tlsgate(tmp_path, ["--set", f"scripts={script}"]).start()
    try:
        loaded = json.loads(gate.wait_for(r"^ADDONS (\[.*\])$").group(1))
    finally:
        gate.stop()
    assert loaded[: len(KEPT)] == KEPT
    mitmproxy_only = {"clientplayback", "serverplayback", "maplocal", "mapremote", "modifybody", "modifyheaders"}
    assert not mitmproxy_only & set(loaded)
    assert "cleartextguard" in loaded and loaded[-1] == "consoleflows"


def test_a_dropped_option_stops_the_run_before_the_banner_and_names_mitmdump(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "tlsgate", "run", "--listen-port", "0", "--confdir", str(tmp_path / "certs")]
    argv += ["--set", "termlog_verbosity=warn", "--set", "map_local=|~q|/srv/answers-token-7f3a"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done
    assert "tlsgate: --set map_local: tlsgate run leaves out mitmproxy's map_local" in done.stderr
    assert 'use mitmdump -s "$(tlsgate script-path)" --set map_local=...' in done.stderr
    assert "answers-token-7f3a" not in done.stderr + done.stdout  # an option's value is never echoed
    assert "listening" not in done.stdout and "mitm.it" not in done.stdout  # no banner
    assert not (tmp_path / "certs").exists(), "nothing is created for a run that cannot start"


def test_mitm_it_serves_the_ca_through_the_lean_master(tmp_path: Path) -> None:
    """The README sends users to http://mitm.it for the CA: mitmproxy's onboarding add-on must still answer."""
    gate = Tlsgate(tmp_path).start()
    try:
        page = curl(gate.proxy_url, "http://mitm.it/")
        pem = curl(gate.proxy_url, "http://mitm.it/cert/pem")
    finally:
        gate.stop()
    assert page.status == 200, page
    assert "/cert/pem" in page.body and "Install" in page.body
    assert pem.status == 200, pem
    assert pem.body.strip() == (tmp_path / "certs" / "mitmproxy-ca-cert.pem").read_text().strip()


def test_the_script_mitmdump_route_still_has_every_default_addon(tmp_path: Path) -> None:
    """What the dropped-option message promises: mitmdump -s "$(tlsgate script-path)" accepts map_local."""
    script = tmp_path / "chain.py"
    script.write_text(CHAIN_SCRIPT)
    mitmdump = Path(sys.executable).parent / "mitmdump"
    ours = subprocess.run([sys.executable, "-m", "tlsgate", "script-path"], capture_output=True, text=True, check=True)
    argv = [str(mitmdump), "-s", ours.stdout.strip(), "-s", str(script)]
    argv += ["--listen-host", "127.0.0.1", "--listen-port", "0", "--set", f"confdir={tmp_path / 'certs'}"]
    argv += ["--set", "tlsgate_metrics_listen=127.0.0.1:0", "--set", f"tlsgate_findings={tmp_path / 'f.jsonl'}"]
    argv += ["--set", f"map_local=|~q|{tmp_path}"]
    gate = Tlsgate(tmp_path, command=argv).start()
    try:
        loaded = json.loads(gate.wait_for(r"^ADDONS (\[.*\])$").group(1))
    finally:
        gate.stop()
    assert {"maplocal", "serverplayback", "core", "onboarding"} <= set(loaded)
