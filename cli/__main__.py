"""``python -m pygrid.cli``: the same as the ``pygrid`` command."""

from pygrid.cli import main

main()
