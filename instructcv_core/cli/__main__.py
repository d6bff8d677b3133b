"""``python -m instructcv_core.cli``: the same program as ``instructcv``."""

from instructcv_core.cli import main

main()
