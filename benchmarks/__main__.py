"""``python -m benchmarks [benchmark] [options]``: see ``--help``."""

from benchmarks.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
