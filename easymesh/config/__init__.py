"""
Configuration: typed objects (L{model}), the settings table shared by flags
and files (L{settings}), and the YAML reader (L{files}).
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
