"""python -m nmt.cli COMMAND [key=value ...]: every command of the toolkit."""

from nmt.cli.commands import main

main()
