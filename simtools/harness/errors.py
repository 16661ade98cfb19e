"""The tools' error base: what a tool raises when it cannot set itself up or a step fails."""

from engine.errors import SimError


class ToolError(SimError):
    """A tool could not do its job (a missing binary, a service that did not start, a step that
    failed): the tool's command prints one line and exits 2 instead of a traceback."""
