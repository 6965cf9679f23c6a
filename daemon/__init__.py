"""StorePulse: a real-time analytics daemon for online shops."""

__version__ = "0.1.0"
