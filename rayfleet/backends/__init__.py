"""Adapters to the systems rayfleet drives; each third-party SDK is imported only in its own module."""
