import sys

from cmt.cli import main

# The guard matters: vLLM starts its engine in a spawned process, which imports the main module again.
if __name__ == "__main__":
    sys.exit(main())
