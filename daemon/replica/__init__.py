"""The recommendations replica: a second process that serves GET /recommendations and /trending.

`feed.py` runs in the daemon (starts the process, sends it the recommender's state and every fold);
`server.py` is the process (`python -m daemon.replica`); `protocol.py` is the framing between them.
Enabled by `[recommendations] listen = "host:port"`.
"""
