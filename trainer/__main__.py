import sys

from service.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
