"""`python -m lorabatch.cli`: the `lorabatch` command."""

from lorabatch.cli.main import main

main()
