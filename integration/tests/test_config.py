"""The flow config: stage tables typed by each stage's Config, unknown keys named with a suggestion, flags for
every key, relative paths against the config file, the user's own tasks and data."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from adnanny.config import CI_CONFIG, DEFAULT_CONFIG, FlowConfigError, load_flow_config

_TOYS = Path(__file__).with_name("test_flow_toys.py")


def _toys():
    spec = importlib.util.spec_from_file_location("adnanny_test_toys_cfg", _TOYS)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


TOYS = _toys()
ST = TOYS.toy_stages()


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def test_stage_tables_are_the_stages_configs(tmp_path: Path) -> None:
    f = _write(tmp_path / "flow.toml", 'seed = 4\n[train]\nsteps = 9\n[cook]\nrows = 6\n')
    cfg = load_flow_config(f, stages=ST)
    assert cfg.seed == 4 and cfg.train.steps == 9 and cfg.cook.rows == 6 and cfg.label.held_out == 6
    assert type(cfg.train) is TOYS.TrainConfig
    assert cfg.stages == ["cook", "train", "label"]


def test_unknown_keys_are_named_with_a_suggestion(tmp_path: Path) -> None:
    f = _write(tmp_path / "flow.toml", '[train]\nstpes = 9\n')
    with pytest.raises(FlowConfigError, match=r"flow\.toml.*unknown key `train\.stpes` \(did you mean `steps`\?\)"):
        load_flow_config(f, stages=ST)
    f = _write(tmp_path / "flow2.toml", 'sed = 1\n')
    with pytest.raises(FlowConfigError, match=r"unknown key `sed` \(did you mean `seed`\?\)"):
        load_flow_config(f, stages=ST)
    with pytest.raises(FlowConfigError, match=r"`stages.1`: unknown stage 'trian' \(did you mean `train`\?\)"):
        load_flow_config(None, stages=ST, default=False, overrides={"stages": ["cook", "trian"]})
    with pytest.raises(FlowConfigError, match=r"`train.steps` must be greater than or equal to 1, got 0"):
        load_flow_config(None, stages=ST, default=False, overrides={"train.steps": 0})


def test_a_table_for_an_uninstalled_stage_says_so(tmp_path: Path) -> None:
    f = _write(tmp_path / "flow.toml", '[distill]\nrows = 3\n')
    with pytest.raises(FlowConfigError, match=r"stage\(s\) \['distill'\] are not installed"):
        load_flow_config(f, stages=ST)


def test_every_key_is_a_flag_and_flags_win_over_the_file(tmp_path: Path) -> None:
    f = _write(tmp_path / "flow.toml", 'seed = 4\n[train]\nsteps = 9\n')
    cfg = load_flow_config(f, stages=ST, cli=["--seed", "7", "--train.steps", "3", "--stages", "cook,train",
                                              "--cook.delay", "0.5"])
    assert (cfg.seed, cfg.train.steps, cfg.stages, cfg.cook.delay) == (7, 3, ["cook", "train"], 0.5)
    assert load_flow_config(f, stages=ST, cli=["--seed", "7"], overrides={"seed": 8}).seed == 8


def test_stages_are_kept_in_flow_order(tmp_path: Path) -> None:
    cfg = load_flow_config(None, stages=ST, default=False, overrides={"stages": "label,cook"})
    assert cfg.stages == ["cook", "label"]


def test_own_task_file_and_data_resolve_against_the_config_folder(tmp_path: Path) -> None:
    from adnanny_cook.tasks import get_task, task_to_toml

    spec = get_task("query_ad")
    d = tmp_path / "proj"
    (d / "tasks").mkdir(parents=True)
    text = task_to_toml(spec).replace('name = "query_ad"', 'name = "my_relevance"')
    (d / "tasks" / "mine.toml").write_text(text)
    (d / "rows.csv").write_text("search_term,ad_title,grade\nloans,Personal Loans,good\n")
    f = _write(d / "flow.toml", 'tasks = ["tasks/mine.toml"]\n[data.my_relevance]\npath = "rows.csv"\n'
                                'columns = "query=search_term,relevance=grade"\n')
    cfg = load_flow_config(f, stages=ST)
    assert cfg.tasks == [str((d / "tasks" / "mine.toml").resolve())]
    assert cfg.data["my_relevance"].path == str((d / "rows.csv").resolve())
    assert cfg.data["my_relevance"].columns == {"query": "search_term", "relevance": "grade"}
    assert list(cfg.task_specs()) == ["my_relevance"]
    assert cfg.task_hashes()["my_relevance"] != spec.hash


def test_data_problems_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(FlowConfigError, match=r"`data.query_ad.path`: file '.*nope.csv' does not exist"):
        load_flow_config(None, stages=ST, default=False,
                         overrides={"data": {"query_ad": {"path": str(tmp_path / "nope.csv")}}})
    (tmp_path / "x.csv").write_text("a\n1\n")
    with pytest.raises(FlowConfigError, match=r"`data.ad_user`: no such task in `tasks`"):
        load_flow_config(None, stages=ST, default=False,
                         overrides={"data": {"ad_user": {"path": str(tmp_path / "x.csv")}}})
    with pytest.raises(FlowConfigError, match=r"`data.query_ad.path` must be a .csv/.*got '.*x.txt'"):
        load_flow_config(None, stages=ST, default=False, overrides={"data": {"query_ad": {"path": "x.txt"}}})
    with pytest.raises(FlowConfigError, match=r"`tasks.0`: unknown task 'no_such_task'"):
        load_flow_config(None, stages=ST, default=False, overrides={"tasks": ["no_such_task"]})


def test_embedded_configs_are_package_data() -> None:
    assert DEFAULT_CONFIG.is_file() and CI_CONFIG.is_file()
    assert load_flow_config(CI_CONFIG).tasks  # validates against the installed stages
    assert load_flow_config(None).run_dir == "adnanny-run"


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(FlowConfigError, match=r"config file `.*nope.toml` does not exist"):
        load_flow_config(tmp_path / "nope.toml", stages=ST)
    f = _write(tmp_path / "bad.toml", "seed = = 1\n")
    with pytest.raises(FlowConfigError, match=r"bad.toml` is not valid TOML"):
        load_flow_config(f, stages=ST)


def test_resolved_flow_toml_round_trips(tmp_path: Path) -> None:
    """RUN_DIR/flow.toml (written by the engine) loads back into the same config."""
    from adnanny.flow import dump_toml

    cfg = load_flow_config(None, stages=ST, default=False, overrides={"seed": 3, "train.steps": 2,
                                                                      "run_dir": str(tmp_path / "r")})
    f = _write(tmp_path / "flow.toml", dump_toml(cfg.model_dump(mode="json")))
    assert load_flow_config(f, stages=ST).model_dump() == cfg.model_dump()
