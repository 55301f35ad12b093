"""Subcommands of the ``hcemu`` CLI (see :mod:`hcemu.cli`)."""
