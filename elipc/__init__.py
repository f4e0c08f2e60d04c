"""elipc: an inter-agent message queue."""

__version__ = "0.1.0"
