"""pipedrive-video-bridge: Pipedrive's video calling app extension on your own video vendor."""

__version__ = "0.1.0"
