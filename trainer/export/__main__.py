"""``python -m trainer.export``: see ``trainer.export.cli``."""

from trainer.export.cli import main

main()
