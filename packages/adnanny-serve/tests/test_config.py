"""`label` / `serve` configs through adnanny-cook's one config mechanism: documented flags and keys, errors naming
the key (with a suggestion), flags over TOML, the same error class from Python."""

from __future__ import annotations

import pytest
from adnanny_serve import cli
from adnanny_serve.config import LabelConfig, ServeConfig, load_label_config, load_serve_config
from adnanny_serve.errors import ConfigError


def _label(argv: list[str]) -> LabelConfig:
    args = cli.build_parser().parse_args([cli._ALIASES.get(a, a) for a in ["label", *argv]])
    return load_label_config(args.config, cli=args.settings_source(parsed_args=args))


def _serve(argv: list[str]) -> ServeConfig:
    args = cli.build_parser().parse_args(["serve", *argv])
    return load_serve_config(args.config, cli=args.settings_source(parsed_args=args))


def test_documented_label_flags(tmp_path) -> None:
    c = _label(["--model", "m", "--task", "query_ad", "--input", "in.csv", "--out", "o.parquet", "--mode", "reasoning",
                "--columns", "id=example_id,query=search_term", "--labels", "label", "--max-input-tokens", "512",
                "--few-shot", "6", "--few-shot-from", "train.csv", "--few-shot-seed", "3", "--no-threshold",
                "--batch-size", "4", "--chunk-size", "16", "--max-tokens", "9", "--device", "cpu",
                "--executor", "ray", "--num-workers", "3", "--allow-pickle", "--no-progress",
                "--fp8-weights", "keep", "--dtype", "bfloat16"])
    assert (c.mode, c.columns, c.labels, c.max_input_tokens, c.few_shot, c.few_shot_from, c.few_shot_seed) == \
        ("reasoning", {"id": "example_id", "query": "search_term"}, ("label",), 512, 6, "train.csv", 3)
    assert (c.no_threshold, c.batch_size, c.chunk_size, c.max_tokens, c.executor, c.num_workers) == \
        (True, 4, 16, 9, "ray", 3)
    assert (c.allow_pickle, c.progress, c.fp8_weights, c.dtype, c.example) == (True, False, "keep", "bfloat16", False)
    assert _label(["--model", "m", "--example", "--threshold", "0.3"]).example is True
    assert _label(["--model", "m", "--threshold", "0.3"]).threshold == 0.3
    # underscore spellings (= the TOML keys) work as flags too
    assert _label(["--model", "m", "--chunk_size", "5", "--no_threshold"]).chunk_size == 5


def test_toml_keys_and_flags_win(tmp_path) -> None:
    f = tmp_path / "label.toml"
    f.write_text('model = "m"\nchunk_size = 32\ncolumns = {query = "search_term"}\nlabels = ["label"]\n'
                 'no_threshold = true\nexample = true\n')
    c = _label(["--config", str(f), "--chunk-size", "8"])
    assert (c.model, c.chunk_size, c.columns, c.labels, c.no_threshold, c.example) == \
        ("m", 8, {"query": "search_term"}, ("label",), True, True)
    assert _label(["--config", str(f), "--no-example"]).example is False


def test_unknown_and_wrong_type_keys_are_named(tmp_path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('model = "m"\nchunk_sise = 4\nbatch_size = "many"\nmode = "think"\nthreshold = 2\n')
    with pytest.raises(ConfigError) as e:
        _label(["--config", str(f)])
    msg = str(e.value)
    assert msg.startswith(f"invalid label config `{f}`: ")
    assert "unknown key `chunk_sise` (did you mean `chunk_size`?)" in msg
    assert "`batch_size` must be a valid integer, unable to parse string as an integer, got 'many'" in msg
    assert "`mode` must be 'label' or 'reasoning', got 'think'" in msg
    assert "`threshold` must be less than or equal to 1, got 2" in msg
    with pytest.raises(ConfigError, match=r"invalid label config: `model` is required \(set it in the TOML file or "
                                          r"with --model\)"):
        _label([])
    with pytest.raises(ConfigError, match=r"`columns`: 'query' is not `task_field=file_column`"):
        _label(["--model", "m", "--columns", "query"])
    with pytest.raises(ConfigError, match="does not exist"):
        _label(["--config", str(tmp_path / "nope.toml")])


def test_python_construction_raises_the_same_error() -> None:
    with pytest.raises(ConfigError, match=r"^invalid label config: `batch_size` must be greater than or equal to 1, "
                                          r"got 0; `top_logprobs` must be a valid integer"):
        LabelConfig(model="m", batch_size=0, top_logprobs="x")
    with pytest.raises(ConfigError, match=r"^invalid label config: `few_shot` needs `few_shot_from`"):
        LabelConfig(model="m", few_shot=2)
    with pytest.raises(ConfigError, match="`threshold` and `no_threshold` exclude each other"):
        LabelConfig(model="m", threshold=0.5, no_threshold=True)
    with pytest.raises(ConfigError, match=r"unknown key `chunksize` \(did you mean `chunk_size`\?\)"):
        LabelConfig(model="m", chunksize=3)
    c = LabelConfig(model="m", columns="query=q", labels="label, quality_label")
    assert c.columns == {"query": "q"} and c.labels == ("label", "quality_label")
    assert c.model_copy(update={"executor": "ray"}).executor == "ray"


def test_serve_flags_and_errors(tmp_path, capsys) -> None:
    c = _serve(["--model", "m", "--port", "8123", "--batch-size", "4", "--max-queue", "9", "--batch-wait-ms", "2",
                "--max-prompt-tokens", "100", "--max-tokens", "50", "--max-queue-tokens", "1000",
                "--batching", "continuous", "--served-model-name", "x", "--api-key", "k", "--allow-pickle",
                "--host", "0.0.0.0"])
    assert (c.port, c.batch_size, c.max_queue, c.batch_wait_ms, c.max_prompt_tokens, c.max_tokens) == \
        (8123, 4, 9, 2.0, 100, 50)
    assert (c.max_queue_tokens, c.batching, c.served_model_name, c.api_key, c.allow_pickle, c.host) == \
        (1000, "continuous", "x", "k", True, "0.0.0.0")
    assert c.prefix_caching is True and _serve(["--model", "m", "--no-prefix-caching"]).prefix_caching is False
    f = tmp_path / "serve.toml"
    f.write_text('model = "m"\nport = "eighty"\nbatchng = "continuous"\n')
    assert cli.main(["serve", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert "adnanny-serve serve: error: invalid serve config" in err
    assert "`port` must be a valid integer" in err and "unknown key `batchng` (did you mean `batching`?)" in err


def test_hand_written_loader_is_gone() -> None:
    assert not hasattr(cli, "_load_toml") and not hasattr(cli, "_merge")
