"""Open DRIMbox appliance daemon."""

__version__ = "0.1.0"
