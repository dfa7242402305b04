"""``RunConfig``: everything needed to rebuild a run, as a typed object, a dict or YAML."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..checks import check_name
from .configs import (
    ArchitectureConfig,
    Config,
    ConfigError,
    DataSplitConfig,
    StartConfig,
    TaskConfig,
    TrainerConfig,
)


@dataclass(frozen=True, kw_only=True)
class RunConfig(Config):
    """A run: its plug-in configs, ``num_iterations`` to train and the ``validation_interval``
    (a checkpoint is stored and validated every that many iterations, and at the end).

    Plug-in configs may be given as config objects or as dicts with a ``type`` (see
    :mod:`.registry`).
    """

    name: str
    task_config: TaskConfig
    architecture_config: ArchitectureConfig
    trainer_config: TrainerConfig
    datasplit_config: DataSplitConfig
    num_iterations: int
    validation_interval: int
    start_config: StartConfig | None = None

    def check(self) -> None:
        try:
            check_name(self.name, "run")
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.num_iterations < 1:
            raise ConfigError(f"num_iterations must be >= 1, got {self.num_iterations}")
        if self.validation_interval < 1:
            raise ConfigError(f"validation_interval must be >= 1, got {self.validation_interval}")

    def to_yaml(self) -> str:
        """The config as YAML text (fields in declaration order)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "RunConfig":
        """Parse YAML text.

        Raises:
            ConfigError: invalid YAML or an invalid config.
        """
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"invalid YAML: {error}") from None
        return cls.from_dict(data)

    @classmethod
    def from_yaml_file(cls, path: str | os.PathLike) -> "RunConfig":
        """Read a YAML file.

        Raises:
            OSError: the file cannot be read.
            ConfigError: invalid YAML or config (the message names the file).
        """
        try:
            return cls.from_yaml(Path(path).read_text())
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
