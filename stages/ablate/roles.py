"""Which arm plays which role in each ablation's figures (conf/ablate.yaml `ablations`).

The figures and the report read the arms only through these roles: an arm can be renamed, or an ablation left
out (`~ablations.python ~arms.python`), without touching the code. Each role says what its arm must measure.
"""
from __future__ import annotations

from codellama_recipe.core.errors import ConfigError

# ablation -> role -> (required, the measurements its figures read)
ROLES: dict[str, dict[str, tuple[bool, tuple[str, ...]]]] = {
    "fim": {"fim": (True, ("infill:psm", "infill:psm_nosuffix", "infill:psm_othersuffix", "infill:spm",
                           "infill:spm_nosuffix", "infill:spm_othersuffix", "exact:psm", "exact:spm", "val_loss")),
            "ar": (True, ("infill:ar", "exact:ar", "val_loss")),
            "psm_only": (False, ("infill:psm", "infill:psm_nosuffix", "infill:psm_othersuffix", "exact:psm"))},
    "lcft": {"none": (True, ("perplexity", "key_retrieval")),
             "theta1e4": (True, ("perplexity", "key_retrieval")),
             "theta1e6": (True, ("perplexity", "key_retrieval"))},
    "python": {"python": (True, ("val_loss",)), "code": (True, ("val_loss",))},
}


def ablation_roles(declared: dict, measures: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    """{ablation: {role: arm}} from `ablations` (optional roles set to null dropped), checked against the arms'
    names and `measure` lists."""
    out = {}
    for ablation, roles in declared.items():
        if ablation not in ROLES:
            raise ConfigError(f"ablations.{ablation}", roles, f"one of {list(ROLES)}")
        if not isinstance(roles, dict):
            raise ConfigError(f"ablations.{ablation}", roles, f"a mapping of its roles {list(ROLES[ablation])} to arms")
        for role, arm in roles.items():
            if role not in ROLES[ablation]:
                raise ConfigError(f"ablations.{ablation}.{role}", arm, f"the roles of {ablation}: "
                                                                       f"{list(ROLES[ablation])}")
        chosen = {}
        for role, (required, needs) in ROLES[ablation].items():
            arm = roles.get(role)
            if arm is None:
                if required:
                    raise ConfigError(f"ablations.{ablation}.{role}", arm, "the name of an arm (this role is "
                                      f"required; leave the ablation out with ~ablations.{ablation})")
                continue
            if arm not in measures:
                raise ConfigError(f"ablations.{ablation}.{role}", arm,
                                  f"one of the arms {sorted(measures)} (or leave the ablation out: "
                                  f"~ablations.{ablation})")
            missing = [m for m in needs if m not in measures[arm]]
            if missing:
                raise ConfigError(f"arms.{arm}.measure", measures[arm],
                                  f"a list that includes {missing} (the arm is ablations.{ablation}.{role})")
            chosen[role] = arm
        out[ablation] = chosen
    return out
