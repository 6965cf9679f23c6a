"""The simulated shop behind `storepulse storefront`.

generator.py makes deterministic events (pure), server.py serves them over HTTP polling and a
websocket feed, main.py is the subcommand (argparse options and `run`).
"""
