"""`python -m hone.cli`: the `hone` command."""
from hone.cli import main

main()
