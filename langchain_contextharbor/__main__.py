"""``python -m langchain_contextharbor``: the ``contextharbor`` command without the script.

Why: the console script is not on ``PATH`` in every environment (``pip install --user``,
a venv that is not activated, systemd units); the module entry always works.
"""

from __future__ import annotations

import sys

from langchain_contextharbor.cli import main

if __name__ == "__main__":
    sys.exit(main())
