"""Pipedrive itself: its OAuth and REST client, and the upkeep of each link's tokens."""
