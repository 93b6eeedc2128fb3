"""The one package that knows about Hydra/OmegaConf: schemas, resolvers and value checks.

- :mod:`finexp.config.schema`: typed dataclasses of the config groups (Hydra's ConfigStore): the entry points'
  tops there, a task and its data in :mod:`~finexp.config.task_schema`, a model and its training in
  :mod:`~finexp.config.training_schema`
- :mod:`finexp.config.resolvers`: ``${package_path:...}`` and friends; where the ``conf/`` tree lives
- :mod:`finexp.config.checks`: :func:`validate_config`, run by every entry point before data or weights load
- :mod:`finexp.config.lookups`: the reads that may find a key absent (``trainer``: Lightning's untyped kwargs;
  a node's ``_target_``) and what the absence means
- what each problem type supports: :mod:`finexp.problems.compat` (the capability table, re-exported here)
"""

from __future__ import annotations

from finexp.config.checks import STRATEGY_PACKAGES, validate_analysis, validate_config, validate_serving
from finexp.config.lookups import TRAINER_DEFAULTS, target_of, trainer_setting
from finexp.config.resolvers import config_dir, monitor_mode, package_path, register_resolvers, run_dir_of
from finexp.config.schema import (
    ALLOWED,
    AnalysisConfig,
    EvalConfig,
    FederatedConfig,
    FederatedDPConfig,
    PathsConfig,
    PredictConfig,
    RuleConfig,
    RulesConfig,
    ServeConfig,
    ServerConfig,
    TrainConfig,
    register_configs,
)
from finexp.config.task_schema import (
    AugmentConfig,
    CrossValidationConfig,
    DataConfig,
    GenerationConfig,
    SerializationConfig,
    TaskConfig,
    WindowConfig,
)
from finexp.config.training_schema import (
    ADAPTER_SCHEMAS,
    OPTIMIZER_SCHEMAS,
    AdamWConfig,
    BottleneckAdapterConfig,
    DistillConfig,
    DPSGDConfig,
    FreezeAdapterConfig,
    FullAdapterConfig,
    GenerativeMethodConfig,
    IA3AdapterConfig,
    LabelDPConfig,
    LoraAdapterConfig,
    MethodConfig,
    ModelConfig,
    PIIConfig,
    PrefixTuningAdapterConfig,
    PrivacyConfig,
    PromptMethodConfig,
    PromptTuningAdapterConfig,
    SchedulerConfig,
    SetFitMethodConfig,
    SGDConfig,
    TopLayersAdapterConfig,
)
from finexp.problems.capabilities import ConfigError
from finexp.problems.compat import check_compatibility

register_configs()
register_resolvers()

__all__ = [
    "ADAPTER_SCHEMAS",
    "ALLOWED",
    "OPTIMIZER_SCHEMAS",
    "STRATEGY_PACKAGES",
    "TRAINER_DEFAULTS",
    "AdamWConfig",
    "AnalysisConfig",
    "AugmentConfig",
    "BottleneckAdapterConfig",
    "ConfigError",
    "CrossValidationConfig",
    "DPSGDConfig",
    "DataConfig",
    "DistillConfig",
    "EvalConfig",
    "FederatedConfig",
    "FederatedDPConfig",
    "FreezeAdapterConfig",
    "FullAdapterConfig",
    "GenerationConfig",
    "GenerativeMethodConfig",
    "IA3AdapterConfig",
    "LabelDPConfig",
    "LoraAdapterConfig",
    "MethodConfig",
    "ModelConfig",
    "PIIConfig",
    "PathsConfig",
    "PredictConfig",
    "PrefixTuningAdapterConfig",
    "PrivacyConfig",
    "PromptMethodConfig",
    "PromptTuningAdapterConfig",
    "RuleConfig",
    "RulesConfig",
    "SGDConfig",
    "SchedulerConfig",
    "SerializationConfig",
    "ServeConfig",
    "ServerConfig",
    "SetFitMethodConfig",
    "TaskConfig",
    "TopLayersAdapterConfig",
    "TrainConfig",
    "WindowConfig",
    "check_compatibility",
    "config_dir",
    "monitor_mode",
    "package_path",
    "register_configs",
    "register_resolvers",
    "run_dir_of",
    "target_of",
    "trainer_setting",
    "validate_analysis",
    "validate_config",
    "validate_serving",
]
