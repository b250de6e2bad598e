"""`python -m clipocr …` runs the CLI (used where console scripts are not installed)."""

from clipocr.commands.app import main

main()
