"""One ModelSpec, one TE<->local name map, one vocabulary-padding rule — all owned by adnanny-ckpt.

The scan below fails when this package grows its own copy again (issue 15, item 5 of "what is wrong").
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import adnanny_megatron

pytestmark = pytest.mark.filterwarnings("ignore")

SRC = Path(adnanny_megatron.__file__).parent


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(), filename=str(p))) for p in sorted(SRC.rglob("*.py"))]


def test_no_second_model_spec_or_name_map_in_megatron() -> None:
    found: list[str] = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and "modelspec" in node.name.lower():
                found.append(f"{path.name}: class {node.name}")
            if isinstance(node, ast.FunctionDef) and node.name in (
                    "local_to_te_name", "te_to_local_name", "padded_vocab_size", "model_spec_from_hf_config"):
                found.append(f"{path.name}: def {node.name}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                    "layer_norm_weight" in node.value or node.value.endswith("layernorm.weight")):
                found.append(f"{path.name}: name-map literal {node.value!r}")
            if isinstance(node, ast.keyword) and node.arg == "make_vocab_size_divisible_by" and \
                    isinstance(node.value, ast.Constant):
                found.append(f"{path.name}: hard-coded vocab padding {node.value.value!r}")
    assert not found, "adnanny-ckpt owns these contracts; import them instead:\n" + "\n".join(found)


def test_scan_notices_a_copy(tmp_path: Path) -> None:
    """The scan is not vacuous: the old provider's class and table are caught."""
    bad = ast.parse('class ModelSpec:\n    pass\n_T = (("input_layernorm.weight", "x.layer_norm_weight"),)\n')
    names = [n.name for n in ast.walk(bad) if isinstance(n, ast.ClassDef)]
    lits = [n.value for n in ast.walk(bad) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and "layer_norm_weight" in n.value]
    assert names == ["ModelSpec"] and lits


def test_megatron_uses_ckpt_objects() -> None:
    from adnanny_ckpt import names

    from adnanny_megatron import provider

    assert provider.local_to_te_name is names.local_to_te_name
    assert provider.te_to_local_name is names.te_to_local_name
    assert provider.ModelSpec is names.ModelSpec
    assert provider.padded_vocab_size is names.padded_vocab_size


def test_paper_vocab_padding_at_tp4() -> None:
    from adnanny_ckpt.names import padded_vocab_size

    assert padded_vocab_size(129280, tp=1) == 129280  # DeepSeek-V3: 1010 x 128
    assert padded_vocab_size(129280, tp=2) == 129280
    assert padded_vocab_size(129280, tp=4) == 129536  # the size the provider used to miss


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_vocab_padding_agreed_between_converter_and_provider(tp: int, tmp_path: Path) -> None:
    """ckpt's converter and megatron's provider pad the same vocabulary to the same rows at TP 1/2/4."""
    from adnanny_ckpt import hf_to_mcore
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config, write_synthetic_checkpoint

    from adnanny_megatron.provider import checkpoint_vocab_rule, transformer_config_from_hf

    cfg = tiny_deepseek_v3_config(fp8=False, vocab_size=300, hidden_size=64, num_hidden_layers=2,
                                  intermediate_size=64, moe_intermediate_size=32)
    write_synthetic_checkpoint(tmp_path / "hf", cfg, dtype="bf16", seed=0)
    hf_to_mcore(str(tmp_path / "hf"), str(tmp_path / "mc"), tp=tp, progress=False)
    manifest = json.loads((tmp_path / "mc" / "adnanny_ckpt.json").read_text())
    spec = transformer_config_from_hf(cfg, bf16=False, tp=tp, use_te=False,
                                      make_vocab_size_divisible_by=checkpoint_vocab_rule(tmp_path / "mc" / "release"))
    assert spec.padded_vocab_size == manifest["padded_vocab_size"] == {1: 384, 2: 512, 4: 512}[tp]
    assert spec.vocab_size == 300
    default = transformer_config_from_hf(cfg, bf16=False, tp=tp, use_te=False)  # ckpt's default rule
    assert default.padded_vocab_size == spec.padded_vocab_size
