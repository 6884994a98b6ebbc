"""The public surface: pinned ``__all__``, light import, errors with actionable messages."""

from __future__ import annotations

import subprocess
import sys

import pytest

import adnanny_megatron
from adnanny_megatron.errors import AdNannyMegatronError
from adnanny_megatron.parallel import PAPER_PRESET, Sizes, parse_sizes

EXPECTED = [
    "PAPER_PRESET", "AdNannyMegatronError", "HangDetected", "MegatronBackend", "OptimSettings", "Sizes",
    "TrainSettings", "__version__", "build_model", "build_optimizer", "initialize", "run_behaviour_check",
    "run_parity", "transformer_config_from_hf",
]


def test_all_is_pinned_and_resolves() -> None:
    assert sorted(adnanny_megatron.__all__) == sorted(EXPECTED)
    for name in EXPECTED:
        assert getattr(adnanny_megatron, name) is not None


def test_import_is_light() -> None:
    code = ("import sys, adnanny_megatron; heavy = [m for m in ('torch', 'megatron', 'transformers') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_paper_preset_is_31x8x8() -> None:
    assert (PAPER_PRESET.pp, PAPER_PRESET.ep, PAPER_PRESET.dp, PAPER_PRESET.tp) == (31, 8, 8, 1)
    assert PAPER_PRESET.world_size == 248
    assert parse_sizes("paper") == PAPER_PRESET


def test_parse_sizes_infers_dp_from_world() -> None:
    assert parse_sizes("pp2,ep2", world_size=4) == Sizes(tp=1, pp=2, ep=2, dp=2)
    assert parse_sizes("tp2", world_size=4) == Sizes(tp=2, pp=1, ep=1, dp=2)
    assert parse_sizes("pp2 ep2 dp2") == Sizes(pp=2, ep=2, dp=2)


@pytest.mark.parametrize(
    ("text", "match"),
    [("pp2,zz3", r"bad `--layout` part 'zz3'"), ("pp3", None)],
)
def test_parse_sizes_errors(text: str, match: str | None) -> None:
    if match is None:
        with pytest.raises(AdNannyMegatronError, match=r"world size 4 is not a multiple of tp\*pp=3"):
            parse_sizes(text, world_size=4)
    else:
        with pytest.raises(AdNannyMegatronError, match=match):
            parse_sizes(text)


def test_sizes_validate_ep_inside_dp() -> None:
    with pytest.raises(AdNannyMegatronError, match=r"`ep`=4 must divide dp\*tp=2"):
        Sizes(ep=4, dp=2)
    with pytest.raises(AdNannyMegatronError, match=r"parallel size `pp` must be a positive int, got 0"):
        Sizes(pp=0)


def test_sizes_from_ckpt_parallel_layout() -> None:
    from adnanny_ckpt.layout import ParallelLayout

    from adnanny_megatron.parallel import sizes_from_layout

    lay = ParallelLayout(pp=2, stages=[[0], [1, 2, 3]], ep=2, dp=2, num_experts=8)
    assert sizes_from_layout(lay) == Sizes(tp=1, pp=2, ep=2, dp=2)
