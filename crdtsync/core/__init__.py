"""The sans-IO core: state machines that take inputs and return effects; no I/O, clocks or randomness."""
