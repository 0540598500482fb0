"""``python -m natkit`` runs the command line."""

from natkit.cli import main

main()
