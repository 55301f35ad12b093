"""Fuzz targets of hcemu's hostile-input boundaries (docs/reliability.md): the ROM image loader, the
GGUF source, the Cython kernel wrappers and the CLI. ``python -m fuzz.run --help``."""
