"""Config serialization (from a mutation audit): from_dict's scalar checks and nesting."""

import pytest

from robobrain.config import (
    EVAL_SEEDS,
    PRESETS,
    PresetConfig,
    WMTrainConfig,
    WorldModelConfig,
    from_dict,
    past_eval_seeds,
    to_dict,
)


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


@pytest.mark.parametrize("num_envs", [1, 2, 16])
def test_collection_seeds_move_past_evaluations_and_stay_distinct(num_envs):
    """The online loop's seeds (--seed + 10,007 x iteration) walked through 1,000,000 +, evaluation's
    starts, at iterations 100-109: they move past them, keeping distinct seeds distinct."""
    seeds = [past_eval_seeds(s, num_envs) for s in range(0, 1_300_000, 997)]
    assert seeds == sorted(set(seeds))  # (one shift for all above the range: order and gaps kept)
    for s in seeds:
        assert s + num_envs <= EVAL_SEEDS.start or s >= EVAL_SEEDS.stop
    assert past_eval_seeds(10_007 * 99, num_envs) == 10_007 * 99


@pytest.mark.parametrize("num_envs", [1, 2, 16])
def test_collection_seeds_move_past_taken_ranges_and_stay_distinct(num_envs):
    """The offline episodes' seeds (collect's default 0 for 2 envs) are taken too: a train run of
    --seed 0 collected its random seed episodes as copies of them. Overlapping and nested ranges."""
    taken = [range(0, 2), range(10_000, 10_016), range(10_010, 10_012), range(20_014, 20_020),
             range(999_999, 1_000_005), range(5_000, 5_000)]  # fmt: skip
    seeds = [past_eval_seeds(s, num_envs, taken) for s in range(0, 1_300_000, 7)]
    assert seeds == sorted(set(seeds))
    for s in seeds:
        for r in (*taken[:-1], EVAL_SEEDS):  # (the empty range takes none)
            assert s + num_envs <= r.start or s >= r.stop, (s, r)
    assert past_eval_seeds(3, num_envs, [range(4, 6)]) == 3 + (0 if num_envs == 1 else 2 + num_envs)
    assert past_eval_seeds(500, num_envs, taken) == 500 + 2 + num_envs  # (past the first range only)
