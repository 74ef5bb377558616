"""``python -m nbstream`` runs the console script."""

from nbstream.cli import main

raise SystemExit(main())
