"""`python -m crdtsync` is the `crdtsync` command."""

from crdtsync.cli import main

main()
