"""Generated policies for benchmarks: N rules mixing exact names, wildcards, pins, cipher and cleartext rules."""

from __future__ import annotations

import base64
import hashlib

PRESETS = ("intermediate", "modern", "ats", "old")


def fake_pin(seed: str) -> str:
    return "sha256/" + base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()


def rule_host(i: int) -> str:
    """Every fifth rule is a wildcard, so matching exercises both tables."""
    return f"*.w{i}.example.net" if i % 5 == 0 else f"h{i}.svc{i % 97}.example.com"


def sample_hosts(count: int, n: int = 600) -> list[str]:
    """Hosts to match: a third exact hits, a third wildcard hits (two labels deep), a third misses."""
    step = max(1, count // (n // 3))
    exact = [f"h{i}.svc{i % 97}.example.com" for i in range(1, count, step) if i % 5]
    wild = [f"a.b.w{i}.example.net" for i in range(0, count, step * 5)]
    miss = [f"miss{i}.nowhere.org" for i in range(n // 3)]
    return (exact + wild + miss)[:n]


def big_policy(count: int, *, pins: bool = True, bench_chain=None) -> str:
    lines = ["version: 1", "pin_sets:"]
    for s in range(max(1, count // 100)):
        lines += [f"  set{s}:", f"    pins: [{fake_pin(f'{s}a')}, {fake_pin(f'{s}b')}]"]
    if bench_chain is not None:
        from tlsgate.tls.pins import spki_pin

        lines += ["  bench:", f"    pins: [{spki_pin(bench_chain.leaf.cert)}, {spki_pin(bench_chain.intermediate.cert)}]"]
    lines += ["defaults:", "  mode: enforce", "  cleartext: block", "rules:"]
    if bench_chain is not None:
        lines += ["  - hosts: localhost", "    pins: bench", "    tls:", "      ciphers: intermediate"]
    for i in range(count):
        lines.append(f"  - hosts: '{rule_host(i)}'")
        kind = i % 4
        if kind == 0:
            lines.append("    cleartext: allow")
        elif kind == 1 and pins:
            lines.append(f"    pins: set{i % max(1, count // 100)}")
        elif kind == 2:
            lines += ["    tls:", "      min_version: '1.2'", f"      ciphers: {PRESETS[i % len(PRESETS)]}"]
        else:
            lines += ["    mode: report", "    certificates:", "      expiry_warning_days: 30"]
    return "\n".join(lines) + "\n"
