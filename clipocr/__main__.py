"""`python -m clipocr …` runs the CLI (used where console scripts are not installed)."""

from clipocr.cli import main

main()
