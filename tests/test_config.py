import pytest

from rlbench.core.config import BudgetConfig, ConfigError, RunConfig
from rlbench.core.configure import build_run_config, load_yaml, merge_overrides, resolve


def test_defaults_are_valid():
    config = build_run_config({})
    assert config.algo_name == "reinforce" and config.task_name == "arith"


def test_set_overrides_are_typed():
    config = resolve(None, ["optim.lr=3e-4", "rollout.samples_per_prompt=8", "budget.steps=7", "eval.limit=null"])
    assert config.optim.lr == pytest.approx(3e-4) and isinstance(config.optim.lr, float)
    assert config.rollout.samples_per_prompt == 8
    assert config.budget.steps == 7
    assert config.eval.limit is None


def test_yaml_then_flags_then_set(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 3\nalgo: reinforce\nbudget: {samples: 640}\nsampling: {temperature: 0.7}\n")
    config = resolve(str(path), ["sampling.temperature=0.9"], {"seed": 5})
    assert config.seed == 5
    assert config.budget.samples == 640
    assert config.sampling.temperature == pytest.approx(0.9)


@pytest.mark.parametrize(
    "override, key",
    [
        ("nope=1", "nope"),
        ("sampling.nope=1", "sampling.nope"),
        ("sampling.temperature=-0.5", "sampling.temperature"),
        ("sampling.top_p=0", "sampling.top_p"),
        ("rollout.batch_size=30", "rollout.batch_size"),
        ("budget.samples=0", "budget.samples"),
        ("optim.lr=fast", "optim.lr"),
        ("seed=1.5", "seed"),
        ("eval.greedy=maybe", "eval.greedy"),
        ("algo.baseline=median", "algo.baseline"),
        ("algo.unknown_knob=1", "algo.unknown_knob"),
        ("task.max_ops=0", "task.max_ops"),
        ("precision=fp8", "precision"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        resolve(None, [override])
    assert str(info.value).startswith(key), str(info.value)


def test_budget_needs_a_limit():
    with pytest.raises(ConfigError, match="budget"):
        BudgetConfig().validate()


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\noptim: {lr: [\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert str(path) in str(info.value) and "line" in str(info.value)


def test_override_needs_equals():
    with pytest.raises(ConfigError, match="key=value"):
        merge_overrides({}, ["optim.lr"])


def test_round_trip_to_dict():
    config = resolve(None, ["budget.tokens=1000"])
    again = build_run_config(config.to_dict())
    assert again == config
    assert isinstance(again, RunConfig)
