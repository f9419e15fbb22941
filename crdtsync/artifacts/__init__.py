"""Large files (checkpoints, model files, datasets) as versions of content-defined chunks."""
