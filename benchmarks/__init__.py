"""StorePulse end-to-end benchmark (`make bench`, `./dev.sh bench`): not part of the test suite."""
