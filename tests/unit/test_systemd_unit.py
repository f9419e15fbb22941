"""deploy/systemd/crdtsync.service against the real command: its ExecStart parses as `crdtsync serve`
flags, the data dir is the unit's state directory, the open files limit covers a full mesh of the
default membership size, and the hardening docs/daemon.md promises is there."""

from __future__ import annotations

import shlex
from pathlib import Path

from crdtsync.cli import serve
from crdtsync.core.membership import MembershipConfig
from crdtsync.daemon.config import HttpConfig
from crdtsync.daemon.server import FILES_BASE, FILES_PER_PEER
from crdtsync.daemon.websocket import WebSocketConfig

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "crdtsync.service"


def unit_settings() -> dict[str, list[str]]:
    """`Section.Key` -> its values in order (a key may repeat), from the unit file."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a setting: {raw!r}"
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def test_exec_start_is_crdtsync_serve_with_real_flags_and_the_state_directory() -> None:
    settings = unit_settings()
    (command,) = settings["Service.ExecStart"]
    program, subcommand, *args = shlex.split(command)
    assert program.endswith("/bin/crdtsync") and subcommand == "serve"
    context = serve.make_context("serve", args)
    assert context.params["config_path"] == "/etc/crdtsync/crdtsync.toml"
    assert settings["Service.StateDirectory"] == ["crdtsync"]
    assert context.params["data_dir"] == "/var/lib/crdtsync"


def test_hardening_and_restart_settings() -> None:
    settings = {key: values[-1] for key, values in unit_settings().items()}
    expected = {
        "Service.User": "crdtsync",
        "Service.NoNewPrivileges": "yes",
        "Service.ProtectSystem": "strict",
        "Service.ProtectHome": "yes",
        "Service.PrivateTmp": "yes",
        "Service.Restart": "on-failure",
        "Service.RestartPreventExitStatus": "2",
        "Service.CapabilityBoundingSet": "",
        "Install.WantedBy": "multi-user.target",
    }
    assert {key: settings.get(key) for key in expected} == expected
    # ProtectSystem=strict leaves only the state directory writable: no other path is opened up.
    assert "Service.ReadWritePaths" not in settings
    needed = (
        FILES_PER_PEER * MembershipConfig().members_max
        + WebSocketConfig().connections_max
        + HttpConfig().watchers_max
        + FILES_BASE
    )
    assert int(settings["Service.LimitNOFILE"]) >= needed
