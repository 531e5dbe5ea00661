"""``python -m harp``: the command line."""

from harp.app.cli import main

main()
