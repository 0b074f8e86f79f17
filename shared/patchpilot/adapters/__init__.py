"""Adapters: the ports implemented per runtime."""
