"""Exceptions users can catch by name."""


class AccessError(PermissionError):
    """A rule asked the device for an access level it does not grant."""


class DivergenceError(FloatingPointError):
    """An update or loss became non-finite; the last good state was kept."""
