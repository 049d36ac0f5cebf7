"""Every config section a profile can hold is strict: one base (``m3.strict.StrictModel``), so a
typo anywhere fails at load with one line naming the key and the nearest valid one."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from m3.app.profile import Profile, ProfileError, load_profile
from m3.strict import StrictModel
from tests.support.paths import TINY


def _models(model: type[BaseModel], seen: set[type]) -> set[type]:
    """``model`` and every pydantic model reachable through its fields' annotations."""
    if model in seen:
        return seen
    seen.add(model)
    for field in model.model_fields.values():
        todo = [field.annotation]
        while todo:
            t = todo.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                _models(t, seen)
            todo.extend(typing.get_args(t))
    return seen


def test_every_config_model_of_a_profile_is_strict():
    models = _models(Profile, set())
    assert len(models) > 15  # the walk reaches the nested sections, not just Profile
    loose = sorted(m.__qualname__ for m in models if not issubclass(m, StrictModel))
    assert loose == []


@pytest.mark.parametrize(
    ("section", "typo", "hint"),
    [
        ("finetune", "epoch", "did you mean 'epochs'"),
        ("finetune", "lerning_rate", "known keys: functions,"),  # nothing close: every key is listed
        ("mine", "num_negative", "'num_negatives'"),
        ("evaluate", "metric", "'metrics'"),
        ("synthesize", "heldout_fraktion", "'heldout_fraction'"),
    ],
)
def test_a_nested_typo_names_the_key_and_the_nearest_one(tmp_path, section, typo, hint):
    data = yaml.safe_load(Path(TINY).read_text())
    data.setdefault(section, {})[typo] = 1
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError) as err:
        load_profile(str(path))
    message = str(err.value)
    assert typo in message and hint in message, message
    assert "\n" not in message.strip(), message


def test_the_old_name_of_the_multivec_function_is_refused_naming_multivec(tmp_path):
    """The multi-vector function is ``multivec`` in every config; a profile still saying ``colbert``
    (its name before) fails at load, and the one-line error names the valid value."""
    data = yaml.safe_load(Path(TINY).read_text())
    data["finetune"] = {"functions": ["dense", "colbert"]}
    path = tmp_path / "old-name.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError) as err:
        load_profile(str(path))
    message = str(err.value)
    assert "finetune.functions" in message and "'multivec'" in message, message
    assert "\n" not in message.strip(), message
