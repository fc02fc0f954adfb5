"""Allow ``python -m punchthrough``."""

from punchthrough.cli.app import main

if __name__ == "__main__":
    main()
