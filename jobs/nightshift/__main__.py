"""`python -m nightshift ...`: the same as the `nightshift` command."""

from nightshift.cli import main

main()
