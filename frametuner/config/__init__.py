"""Configuration: JSONC loading, the typed ``TrainConfig`` schema, CLI flags and errors."""

from .dataset import DatasetConfig, DatasetProblem, VideoOptions, load_dataset_configs, validate_dataset_list
from .errors import ConfigError
from .jsonc import load_jsonc, loads_jsonc
from .loader import (
    add_config_arguments,
    config_to_json,
    load_config,
    overrides_from_args,
    reject_unknown_flags,
    resolve_input_path,
)
from .schema import (
    GROUPS,
    TrainConfig,
    check_frame_count,
    field_group,
    parse_resolution,
    unimplemented_settings,
)

__all__ = [
    "ConfigError",
    "DatasetConfig",
    "DatasetProblem",
    "GROUPS",
    "TrainConfig",
    "add_config_arguments",
    "check_frame_count",
    "config_to_json",
    "field_group",
    "load_config",
    "load_dataset_configs",
    "load_jsonc",
    "loads_jsonc",
    "overrides_from_args",
    "parse_resolution",
    "reject_unknown_flags",
    "resolve_input_path",
    "unimplemented_settings",
    "validate_dataset_list",
    "VideoOptions",
]
