"""deita's entry in a checkout: ``python train.py recipe=NAME`` or ``accelerate launch train.py recipe=NAME``.

The same command as ``deita recipe=NAME`` / ``python -m deita`` once installed (``deita/__main__.py``).
"""

from deita.__main__ import main

if __name__ == "__main__":
    main()
