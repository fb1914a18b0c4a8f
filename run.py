"""alignbench entry point: ``python run.py algo=repo model=alpaca7b`` (see README.md); the same as the
``alignbench`` command that ``pip install`` puts on the PATH (``alignbench.app``)."""

from alignbench.app import main

if __name__ == "__main__":
    main()
