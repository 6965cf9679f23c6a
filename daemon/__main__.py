"""`python -m daemon` runs the `storepulse` command."""

from daemon.cli import main

raise SystemExit(main())
