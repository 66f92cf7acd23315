"""The streaming benchmark: the site against the direct-SDK floor (`python -m bench.run`)."""
