"""Configuration: one Settings object, built once at start and passed down."""

from simconfig.settings import Settings, SettingsError, load_settings, redact_url

__all__ = ["Settings", "SettingsError", "load_settings", "redact_url"]
