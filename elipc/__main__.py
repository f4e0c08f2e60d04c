"""`python -m elipc`: the command line."""

from elipc.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
