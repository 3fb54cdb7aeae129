"""``python -m bench``: the same as ``leaderless bench``."""

from .command import main

if __name__ == "__main__":
    main()
