"""`python -m daemon.replica`: the replica process (started by the daemon, not by hand)."""

from daemon.replica.server import main

raise SystemExit(main())
