"""Typed errors: every bad input ends in one of these, with a message a person can act on."""


class LossLensError(ValueError):
    """Base class for input errors that the CLI and the app show as a message."""


class EmptyTextError(LossLensError):
    """A text is empty or only whitespace."""


class TooFewTokensError(LossLensError):
    """A text has one token, so there is no next token to predict."""


class ContextLengthError(LossLensError):
    """A text has more tokens than the model's context can read."""


class InvalidParameterError(LossLensError):
    """top-k, temperature, seed or a batch limit is out of range."""


class CorpusError(LossLensError):
    """A corpus cannot be read, is not text, is too large, or failed its hash check."""


class NoBatchesError(LossLensError):
    """A data loader yields no batch (the book's calc_loss_loader returns NaN there)."""


class WeightsError(LossLensError):
    """Model weights cannot be found, downloaded or mapped."""


class ServerBusyError(LossLensError):
    """The server is doing the one thing of this kind it allows at a time; try again later."""


class StorageError(LossLensError):
    """A model cannot be saved: the cache folder is unwritable, the disk is full, or the quota
    for saved models leaves no room."""
