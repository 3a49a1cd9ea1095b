"""``python -m fedweave``: the same command line as the ``fedweave`` script."""

from .cli import main

main()
