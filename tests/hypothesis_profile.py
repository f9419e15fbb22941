"""Hypothesis settings for the whole suite, loaded as a pytest plugin (`-p hypothesis_profile` in
pyproject.toml: a second conftest.py would clash with tests/integration/conftest.py under mypy)."""

from hypothesis import settings

# No per-example deadline: speed is measured in bench/, not asserted by tests, and on a loaded 2-core
# machine an example of a simulator-backed property took 1.4 s against hypothesis' default 200 ms.
settings.register_profile("crdtsync", deadline=None)
settings.load_profile("crdtsync")
