"""``python -m robobrain``: the ``robobrain`` command, for an environment whose scripts folder is not
on the PATH."""

from robobrain.cli import entry

if __name__ == "__main__":
    entry()
