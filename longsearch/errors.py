"""Errors a user can cause. The CLI prints the message alone and exits with code 2."""


class LongsearchError(Exception):
    """Base class: the message says what is wrong and what to do."""


class InputError(LongsearchError):
    """A malformed argument or value (a length, a method name, a factor vector)."""


class ModelError(LongsearchError):
    """A model that cannot be loaded or that has no rotary embedding longsearch can patch."""


class FactorsError(LongsearchError):
    """A factors file or vector that is malformed or does not fit the model."""


class NeedleError(LongsearchError):
    """A needle set that is malformed or was built for another tokenizer or length."""


class RunError(LongsearchError):
    """A run directory that cannot be created, resumed or read."""


class ExportError(LongsearchError):
    """An export target that cannot be written."""
