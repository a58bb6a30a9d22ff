"""The errors nightshift raises on purpose: each names the file, column, model or id at fault."""

from __future__ import annotations


class NightshiftError(Exception):
    """Base class: an expected failure with a message meant for a person."""


class ConfigError(NightshiftError):
    """The project file or an environment override is invalid."""


class ContractError(NightshiftError):
    """Input data breaks a model's feature contract."""


class PartitionNotReady(NightshiftError):
    """A partition has no _SUCCESS marker (yet) or does not exist."""


class ModelNotFound(NightshiftError):
    """No such model, version or alias in the registry."""


class ArtifactIntegrityError(NightshiftError):
    """A model artifact is missing or its SHA-256 does not match the registry."""


class ParityError(NightshiftError):
    """ONNX and scikit-learn disagree beyond tolerance: nothing is registered."""


class DuplicateEntityError(ContractError):
    """The same entity id appears more than once in one partition.

    `entity_ids` holds some of the repeated ids (as stored, text) when the raiser knows them, so
    the driver can name the files that hold them.
    """

    def __init__(self, message: str, entity_ids: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.entity_ids = tuple(entity_ids)

    def __reduce__(self) -> tuple[type, tuple[str, tuple[str, ...]]]:  # survives pickling (Dask)
        return (type(self), (str(self), self.entity_ids))


class CommitError(NightshiftError):
    """A partition could not be committed; the previous predictions still serve."""


class RunLockTimeout(NightshiftError):
    """Another run of the same (model, ds) holds the lock."""


class ClusterUnavailable(NightshiftError):
    """The configured Dask scheduler cannot be reached."""


class ModelSchemaError(NightshiftError):
    """A model's ONNX inputs or outputs do not fit its feature contract."""
