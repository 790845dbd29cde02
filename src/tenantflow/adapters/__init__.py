"""Adapters: technology-specific implementations of the ports (stores, clocks, providers)."""
