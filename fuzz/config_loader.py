"""Mutation fuzzing of the daemon's config loader: any bytes as a config file must either load or
raise ConfigError naming what is wrong; anything else is a finding.

    python -m fuzz.config_loader --minutes 2
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from crdtsync.daemon.config import ConfigError, load_config
from fuzz._runner import cli, run

SEEDS = [
    b'node_id = "a"\n[security]\nmode = "plaintext"\n',
    b'node_id = "a"\nlisten = "tcp://127.0.0.1:7400"\npeers = ["tcp://127.0.0.1:7401"]\n[security]\nmode = "plaintext"\n',
    b'node_id = "a"\ndurability = "process"\n[http]\nlisten = "127.0.0.1:7480"\nbody_bytes_max = 1024\n'
    b'[log]\nlevel = "debug"\nformat = "json"\n[replication]\nae_interval_ms = 500\nretransmit_enabled = false\n'
    b'[security]\nmode = "plaintext"\n',
    b'node_id = "a"\n[security]\nmode = "curve"\nkey_file = "/nonexistent"\npeer_keys = { "tcp://h:1" = "k" }\n',
]


def make_target(directory: Path) -> Callable[[bytes], str]:
    path = directory / "fuzz.toml"

    def target(data: bytes) -> str:
        path.write_bytes(data)
        try:
            load_config(path, {})
        except ConfigError as exc:
            return f"error:{str(exc).split(':', 1)[0]}"
        return "loaded"

    return target


def main(argv: list[str] | None = None) -> int:
    args = cli("config_loader", __doc__.split("\n\n")[0], argv)
    with tempfile.TemporaryDirectory() as scratch:
        target = make_target(Path(scratch))
        return run("config_loader", SEEDS, target, args.minutes * 60.0, args.seed, args.corpus, args.findings)


if __name__ == "__main__":
    sys.exit(main())
