"""Analyzers of the stream: moving averages over window series (moving_average.py), anomalies
(anomaly.py), trending items (trending.py) and recommendations (recommend.py, recusers.py).

Nothing is imported here: the recommendations process loads the recommender alone, not the window
analysers and their numpy and sketches (daemon/replica/server.py).
"""
