"""The benchmark's own policies for the TLS upstream on localhost: one that turns on every section, and a noisy one.

Both are in `mode: report`, so the load client's requests keep getting 200 while every check
runs: an enforced verdict would answer 403 and the harness counts only 200s.
"""

from __future__ import annotations

import textwrap

from tests.certgen import Chain
from tlsgate.tls.probes import PROBE_KINDS

# The whole catalogue (issue 23): every certificate, chain and protocol probe, each tried once per (client address,
# host) on PROBE_FRACTION of the connections that still have an untried kind. The load client (loadclient.py)
# verifies like a correct app and refuses them all; each run connects from its own source address, a new device
# to tlsgate, so every run of the new-connection workload meets the catalogue again.
PROBES = PROBE_KINDS
PROBE_FRACTION = 0.05

# What the all-sections policy turns on, for the BENCHMARKS text (kept next to the policy it describes).
ALL_SECTIONS_TEXT = (
    "every section in report mode, so every check runs and records but nothing is refused (every request of the "
    "load client must get 200, and the harness checks it does): `mode: report` in defaults and rule; `devices:` "
    "names 127.0.0.0/8 (every finding and metric carries the device); "
    "`identifiers:` seeds an e-mail, phone, advertising ID and Android ID for that device (the load client's requests "
    "contain none, so they are searched for in URL, headers and body forms and not found); `payload:` with all three "
    "checks (ecb, secrets, identifiers) on `report`; `cleartext:` per protocol; `tls:` min 1.2 and the `intermediate` "
    "suites; `certificates:` with explicit key sizes, no SHA-1 and a 14-day expiry warning; `pins:` the benchmark "
    "chain's leaf and intermediate (a matching pin set with an expiry date); `client:` min 1.2, `weak_suites: "
    f"strict`, `require_sni`, and the whole probe catalogue: all {len(PROBES)} `probes` (certificate, chain and "
    f"protocol probes) with `probe_fraction: {PROBE_FRACTION}` (see Probes below); `quic: inspect`; "
    "`local_destinations: refuse` (the upstream is named with `--resolve`); `app:` an Android release build declaring "
    "cleartext forbidden, user CAs untrusted, TLS 1.2, forward secrecy and the same pins. Left off: `app.must_pin` (it "
    "records `not_pinned` on every connection an app accepts tlsgate's certificate on, and the load client trusts "
    "tlsgate's CA: that is a noisy policy, measured as such)."
)


def _pins(chain: Chain) -> str:
    from tlsgate.tls.pins import spki_pin

    return f"[{spki_pin(chain.leaf.cert)}, {spki_pin(chain.intermediate.cert)}]"


# Stated in defaults and again in the rule, so both levels of each section are parsed and applied.
SHARED_SECTIONS = """quic: inspect
local_destinations: refuse
payload: {ecb: report, secrets: report, identifiers: report, max_bytes: 65536}
tls:
  min_version: "1.2"
  ciphers: intermediate
certificates:
  min_rsa_bits: 2048
  min_ec_bits: 256
  allow_sha1: false
  expiry_warning_days: 14
"""


def shared(indent: str) -> str:
    return textwrap.indent(SHARED_SECTIONS, indent)


def all_sections_policy(chain: Chain) -> str:
    """Every policy section on for the benchmark host `localhost`, in report mode (see ALL_SECTIONS_TEXT)."""
    probes = ", ".join(PROBES)
    return f"""version: 1
devices:
  127.0.0.0/8: bench-device
identifiers:
  bench-device:
    email: bench.user@example.org
    phone: "+1 555 0100 987"
    advertising_id: [38400000-8cf0-11bd-b23e-10b96e40000d]
    android_id: 9774d56d682e549c
pin_sets:
  bench:
    pins: {_pins(chain)}
    expires: 2099-12-31
defaults:
  mode: report
  cleartext: {{default: block, mqtt: allow}}
{shared("  ")}  client:
    min_version: "1.2"
    weak_suites: report
    require_sni: true
    probes: []
rules:
  - name: bench-upstream
    hosts: [localhost]
    mode: report
    pins: bench
    cleartext: {{default: block, http: block}}
{shared("    ")}    client:
      min_version: "1.2"
      weak_suites: strict
      require_sni: true
      probes: [{probes}]
      probe_fraction: {PROBE_FRACTION}
    app:
      source: "res/xml/network_security_config.xml:3 <domain-config>"
      platform: android
      build: release
      cleartext: forbid
      user_cas: untrusted
      pins: bench
      must_pin: false
      min_version: "1.2"
      forward_secrecy: true
      declared_at:
        cleartext: "res/xml/network_security_config.xml:3 <domain-config cleartextTrafficPermitted=\\"false\\">"
        pins: "res/xml/network_security_config.xml:5 <pin-set>"
"""


NOISY_TEXT = (
    "`tlsgate-noisy` is the default policy plus one rule for the benchmark host in `mode: report` whose pin set "
    "matches no certificate of the upstream's chain: every upstream TLS connection is checked, fails the pin check, "
    "and is recorded (a `pin` / `pin_mismatch` finding with the chain's evidence, written to the findings file) and "
    "forwarded. With keep-alive that is one finding per client connection, with a new connection per request one per "
    "request."
)


def noisy_policy() -> str:
    """A report-mode rule for `localhost` whose pins match nothing: one `pin_mismatch` finding per upstream connection."""
    from benchmarks.policygen import fake_pin

    return f"""version: 1
pin_sets:
  not-the-bench-chain:
    pins: [{fake_pin("noisy-a")}, {fake_pin("noisy-b")}]
defaults:
  mode: enforce
  cleartext: block
rules:
  - name: noisy
    hosts: [localhost]
    mode: report
    pins: not-the-bench-chain
"""
