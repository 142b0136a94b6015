"""
Configuration: typed objects (L{model}, L{mesh}), the settings table shared
by flags and files (L{settings}), the rules routes and clusters must follow
however they are made (L{validate}), and the YAML reader (L{files}).
"""

from easymesh.config.model import (
    ConfigError,
    FilterSpec,
    ListenerConfig,
    PoolSettings,
    RateLimit,
    SidecarConfig,
)

__all__ = [
    "ConfigError",
    "FilterSpec",
    "ListenerConfig",
    "PoolSettings",
    "RateLimit",
    "SidecarConfig",
]
