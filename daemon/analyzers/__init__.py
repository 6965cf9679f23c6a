"""Analyzers: the registry of window-series analysers (one line per analyser)."""

from daemon.analyzers.moving_average import MovingAverages

ANALYZERS = {
    "moving_average": MovingAverages,
}
