"""The exceptions the CLI prints as a single line (and exits ≠ 0) instead of a traceback."""


class InputError(Exception):
    """Bad input the user can fix: the message names the file, the sample and what is wrong."""


class RunInterrupted(Exception):
    """The machine stopped a run (a helper process was killed, …): neither the input's fault
    nor a bug. The message says what was kept and how to go on (a rerun or ``--resume``)."""
