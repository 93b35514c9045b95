"""Config serialization (from a mutation audit): from_dict's scalar checks and nesting."""

import pytest

from robobrain.config import PRESETS, PresetConfig, WMTrainConfig, WorldModelConfig, from_dict, to_dict


def test_a_bool_is_no_json_float():
    with pytest.raises(TypeError, match=r"WMTrainConfig\.lr must be a JSON float"):
        from_dict(WMTrainConfig, {"lr": True})
    with pytest.raises(TypeError, match="free_nats"):
        from_dict(WorldModelConfig, {"free_nats": False})


def test_json_integers_for_float_fields_come_back_as_floats():
    cfg = from_dict(WMTrainConfig, {"lr": 1, "grad_clip": 100})
    assert type(cfg.lr) is float and type(cfg.grad_clip) is float
    assert to_dict(cfg)["lr"] == 1.0 and isinstance(to_dict(cfg)["lr"], float)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_round_trips_through_nested_dicts(name):
    preset = PRESETS[name]
    back = from_dict(PresetConfig, to_dict(preset))
    assert isinstance(back.world_model, WorldModelConfig) and isinstance(back.train, WMTrainConfig)
    assert back == preset
