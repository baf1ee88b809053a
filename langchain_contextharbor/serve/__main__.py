"""``python -m langchain_contextharbor.serve``: the same as ``contextharbor serve``."""

import sys

from langchain_contextharbor.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
