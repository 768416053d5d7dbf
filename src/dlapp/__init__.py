"""dlapp: run deep-learning apps on a shared, multi-tenant GPU cluster."""

__version__ = "0.1.0"
