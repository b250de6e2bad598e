"""One exception type for bad user input, so the CLI can print it as a single line and exit ≠ 0."""


class InputError(Exception):
    """Bad input the user can fix: the message names the file, the sample and what is wrong."""
