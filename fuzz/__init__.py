"""Fuzz targets: `python -m fuzz.<target> --help`."""
