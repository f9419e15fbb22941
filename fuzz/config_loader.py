"""Coverage-guided fuzzing of the daemon's config loader: any bytes as a config file must either load or
raise ConfigError naming what is wrong; anything else is a finding.

    python -m fuzz.config_loader --minutes 2
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from crdtsync.daemon.config import ConfigError, load_config
from fuzz._runner import Fuzzable, Target, cli_main

SEEDS = [
    b'node_id = "a"\n[security]\nmode = "plaintext"\n',
    b'node_id = "a"\nlisten = "tcp://127.0.0.1:7400"\npeers = ["tcp://127.0.0.1:7401"]\n[security]\nmode = "plaintext"\n',
    b'node_id = "a"\ndurability = "process"\n[http]\nlisten = "127.0.0.1:7480"\nbody_bytes_max = 1024\n'
    b'[log]\nlevel = "debug"\nformat = "json"\n[replication]\nae_interval_ms = 500\nretransmit_enabled = false\n'
    b'[security]\nmode = "plaintext"\n',
    b'node_id = "a"\n[security]\nmode = "curve"\nkey_file = "/nonexistent"\npeer_keys = { "tcp://h:1" = "k" }\n',
]


def make_target(scratch: Path, options: frozenset[str] = frozenset()) -> Fuzzable:
    path = scratch / "fuzz.toml"

    def target(data: bytes) -> None:
        path.write_bytes(data)
        # ConfigError is the loader's one way to refuse; anything else propagates as a finding.
        with contextlib.suppress(ConfigError):
            load_config(path, {})

    return target


TARGET = Target(
    name="config_loader",
    description=__doc__.split("\n\n")[0],
    seeds=lambda: list(SEEDS),
    make=make_target,
    max_len=4096,
)


def main(argv: list[str] | None = None) -> int:
    return cli_main(TARGET, argv)


if __name__ == "__main__":
    sys.exit(main())
