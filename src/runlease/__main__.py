"""``python -m runlease``: the same command line as the ``runlease`` script."""

from runlease.cli import main

if __name__ == "__main__":
    main()
