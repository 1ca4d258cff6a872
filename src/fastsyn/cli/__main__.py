"""``python -m fastsyn.cli``: the ``fastsyn`` command."""

import sys

from fastsyn.cli import main

sys.exit(main())
