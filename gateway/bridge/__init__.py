"""Dialect bridge: translations between client dialects and what a backend speaks."""
