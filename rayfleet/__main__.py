"""``python -m rayfleet`` runs the CLI."""

from rayfleet.cli import main

main()
