"""Auth plugins, named as in the KavachOS docs: ``from kavach.auth import polar``."""

from kavach.polar.plugin import polar

__all__ = ["polar"]
