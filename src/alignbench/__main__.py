"""``python -m alignbench ARGS``: the ``alignbench`` command (``alignbench.app``)."""

from alignbench.app import main

if __name__ == "__main__":
    main()
