"""Adapters that make a Playout the face of a voice agent in other frameworks (optional extras)."""
