"""The `crdtsync serve` daemon: configuration, HTTP API, metrics, logs and the demo."""
