"""benchmarks/profile.py's summary of a py-spy raw profile: the groups BENCHMARKS.md's "Lean master" table quotes."""

from __future__ import annotations

from pathlib import Path

from benchmarks.profile import summarise

LOOP = "run (asyncio/runners.py:194);BaseEventLoop._run_once (asyncio/base_events.py:1971)"
RAW = f"""\
{LOOP};DispatchTable.trigger_event (tlsgate/app/dispatch.py:120);__exit__ (contextlib.py:144) 3
{LOOP};trigger_event (mitmproxy/addonmanager.py:280);request (tlsgate/addons/cleartext.py:10);judge (tlsgate/checks/cleartext.py:5) 2
{LOOP};do_handshake (OpenSSL/SSL.py:1900) 4
{LOOP};handle_event (mitmproxy/proxy/layer.py:157) 1
{LOOP};EpollSelector.select (selectors.py:468) 7
"""


def row(text: str, group: str) -> list[str]:
    (line,) = [x for x in text.splitlines() if x.startswith(f"| {group}")]
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_groups_charge_stdlib_to_its_caller_and_leave_epoll_waits_out(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW)
    text = summarise(raw)
    assert text.startswith("10 samples on CPU (7 more waiting in epoll, left out)")
    # self, self with the stdlib charged to its nearest caller, total
    # contextlib under either trigger_event (tlsgate's table or mitmproxy's walk) is dispatch, not tlsgate's checks
    assert row(text, "event dispatch") == ["0.0%", "30.0%", "50.0%"]
    assert row(text, "tlsgate") == ["20.0%", "20.0%", "20.0%"]
    assert row(text, "TLS") == ["40.0%", "40.0%", "40.0%"]
    assert row(text, "mitmproxy proxy core") == ["10.0%", "10.0%", "10.0%"]
    assert row(text, "Python stdlib") == ["30.0%", "0.0%", "100.0%"]
    assert "| `do_handshake (OpenSSL/SSL.py)` | 40.0% |" in text
