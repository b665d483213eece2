"""The one exception type users see: a clear message, no traceback unless asked for."""


class DistilleryError(Exception):
    """A problem the user can fix: bad params, bad data, a missing or corrupt file."""
