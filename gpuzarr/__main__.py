"""``python -m gpuzarr``: the same command line as the ``gpuzarr`` script."""

from __future__ import annotations

from gpuzarr.tools.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
