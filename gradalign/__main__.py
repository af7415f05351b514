"""`python -m gradalign` runs the CLI."""

from gradalign.cli.app import main

if __name__ == "__main__":
    main()
