"""User-facing errors: the CLI prints these as one clear line instead of a traceback."""


class SurfadError(Exception):
    """A problem with the user's input (file, field or option) that the user can fix."""


class BadInputError(SurfadError):
    """An image, mask or dataset file that cannot be used; the message names the file."""


class ImageTooLarge(BadInputError):
    """An image whose header declares more pixels than allowed; refused before decoding."""
