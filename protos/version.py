"""Versions both ends compare before they speak."""

# Bumped on any change to the wire that an older peer would misread.
PROTOCOL_VERSION = 1

AGENT_SERVICE = "tether.v1.Agent"
