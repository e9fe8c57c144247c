"""The model library: what is on disk (inspection, registry, watcher, import)."""
