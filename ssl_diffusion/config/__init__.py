"""One typed config tree (``Config`` in ``root.py``), YAML recipes that only override it, and
``key=value`` command-line overrides; torch-free, so ``--dry-run`` and config errors are instant.

    cfg = load_config("recipes/quickstart.yaml", ["optim.lr=3e-4"])   # -> Config
    cfg.optim.lr, cfg.trainer.max_steps
"""

from ssl_diffusion.config.loader import (
    apply_overrides,
    build,
    check_mapping,
    config_from_dict,
    deep_merge,
    dump_config,
    get_dotted,
    load_config,
    parse_override,
    set_dotted,
    to_dict,
    valid_keys,
)
from ssl_diffusion.config.root import (
    Config,
    EvalConfig,
    register_section,
    resume_safe_keys,
    root_schema,
)

__all__ = [
    "Config", "EvalConfig", "apply_overrides", "build", "check_mapping", "config_from_dict",
    "deep_merge", "dump_config", "get_dotted", "load_config", "parse_override",
    "register_section", "resume_safe_keys", "root_schema", "set_dotted", "to_dict", "valid_keys",
]
