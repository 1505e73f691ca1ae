"""Where tlsgate keeps its CA when no `--confdir` is given: the same place wherever it is started.

A CA directory relative to the working directory made every start from another
directory create a second CA, silently, and every device that trusted the first
one stopped working. The rule, in order:

1. `$TLSGATE_CONFDIR` (the container image sets it to its volume);
2. the checkout's `certs/` when tlsgate runs from a source checkout (`make run`, `pip install -e .`);
3. the per-user data directory, `$XDG_DATA_HOME/tlsgate` (`~/.local/share/tlsgate`), for an installed package.

Creating a CA while another one exists in one of those places is said loudly.
"""

from __future__ import annotations

import os
from pathlib import Path

import tlsgate
from tlsgate.tls.ca import ca_paths

ENV_CONFDIR = "TLSGATE_CONFDIR"


def checkout_root() -> Path | None:
    """The source checkout this `tlsgate` package runs from, or None for an installed package."""
    root = Path(tlsgate.__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "policies").is_dir() and (root / "tlsgate" / "__init__.py").is_file():
        return root
    return None


def user_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or ""
    return (Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share") / "tlsgate"


def default_confdir() -> Path:
    configured = os.environ.get(ENV_CONFDIR, "")
    if configured:
        return Path(configured)
    root = checkout_root()
    return root / "certs" if root is not None else user_data_dir()


def candidate_confdirs() -> list[Path]:
    """Every place a CA of an earlier start may be: the defaults above and `./certs` (tlsgate before 0.2)."""
    places = [Path(os.environ[ENV_CONFDIR])] if os.environ.get(ENV_CONFDIR) else []
    root = checkout_root()
    if root is not None:
        places.append(root / "certs")
    places += [user_data_dir(), Path.cwd() / "certs"]
    return places


def other_cas(chosen: Path) -> list[Path]:
    """CA directories other than `chosen` that already hold a tlsgate CA: a device may trust one of those."""
    seen = {Path(os.path.abspath(chosen))}
    found = []
    for place in candidate_confdirs():
        absolute = Path(os.path.abspath(place))
        if absolute in seen:
            continue
        seen.add(absolute)
        if ca_paths(absolute).cert_pem.is_file():
            found.append(absolute)
    return found


def new_ca_warning(chosen: Path) -> str | None:
    """The loud line printed when a new CA was just created although another exists: devices will break."""
    others = other_cas(chosen)
    if not others:
        return None
    where = ", ".join(f"{p}/" for p in others)
    return (
        f"tlsgate: WARNING: created a NEW CA in {chosen}/, but a tlsgate CA already exists in {where}. "
        f"Devices that trust that one will reject this one; to keep it, start with --confdir {others[0]} "
        f"(or set {ENV_CONFDIR})"
    )
