"""Typed errors whose message is written for the user and says what to do next.

Anything the user can cause (a bad file, a bad name, a full disk) raises a subclass of
ApplianceError. The CLI prints `error: <message>` and the UI shows the message; neither
shows a traceback.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base class: str(error) is a complete sentence for the user."""


class ModelFileError(ApplianceError):
    """A model file or folder that cannot be used as it is."""


class EmptyModelFile(ModelFileError):
    pass


class TruncatedModelFile(ModelFileError):
    """The header or the data ends early: a half-copied or damaged file."""


class NotAModelFile(ModelFileError):
    pass


class UnsafePickleFile(ModelFileError):
    pass


class UnsupportedModel(ModelFileError):
    pass


class RegistryError(ApplianceError):
    """models/registry.json cannot be read or written."""


class RegistryCorrupt(RegistryError):
    pass


class UnknownModel(ApplianceError):
    pass


class ImportRefused(ApplianceError):
    """An import that would be unsafe or cannot work (bad name, collision, link...)."""


class DiskFull(ApplianceError):
    pass
