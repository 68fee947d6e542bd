"""One exception family, so callers can catch everything patsparse rejects in one clause.

Every message names *what* is wrong and *where* (file, layer, kernel index, op), because the
user reading it is usually looking at their own model, not at our code.
"""


class PatsparseError(Exception):
    """Base class of every error patsparse raises on purpose."""


class InputError(PatsparseError, ValueError):
    """Bad user input: wrong shape, rate out of range, non-finite weight, bad option."""


class FormatError(PatsparseError, ValueError):
    """A file (checkpoint, dataset, spec, manifest) is missing, corrupt or of the wrong kind."""


class UnsupportedError(PatsparseError, NotImplementedError):
    """An op, layer or configuration that patsparse does not handle (named in the message)."""


class BuildError(PatsparseError, RuntimeError):
    """The native build failed or no compiler exists; the message says where the source is kept."""


class DivergedError(InputError):
    """Training produced a non-finite loss; the message names the phase and batch. An
    InputError because the usual cause is a setting (learning rate, penalty) the caller chose."""
