"""What the regimes mean on a pretrained backbone: phase1.epochs 0 leaves phase 1 out (only when pretrained), phase 3
first trains the new classifier with the ICs, and each run gets the title tables print."""

from __future__ import annotations

import pytest

from exitlab.errors import ConfigError
from exitlab.runs.config import load_config
from exitlab.training.phases import plan_phases
from exitlab.training.pretrained import regime_title

PRE = ["model.backbone=hf:minilm", "model.pretrained=true", "data.name=debian_sections",
       "data.text.tokenizer=hf:minilm"]


@pytest.mark.parametrize("sets, kinds, final_head, title", [
    (["regime=joint"], [2], False, "joint (from pretrained)"),
    (["regime=disjoint"], [1, 3], False, "disjoint (fine-tuned backbone)"),
    (["regime=mixed"], [1, 2], False, "mixed (fine-tuned, then all)"),
    (["regime=disjoint", "phase1.epochs=0"], [3], True, "disjoint (frozen pretrained)"),
    (["regime=mixed", "phase1.epochs=0"], [2], False, "mixed (all from pretrained)"),
    (["regime=[3]"], [3], True, "disjoint (frozen pretrained)"),
    (["regime=disjoint", "phase1.epochs=0", "budget=4"], [3], True, "disjoint (frozen pretrained)"),
])
def test_the_plan_and_title_of_each_regime_on_a_pretrained_backbone(sets, kinds, final_head, title):
    cfg = load_config(None, PRE + sets)
    phases = plan_phases(cfg, num_exits=3)
    assert [p.kind for p in phases] == kinds and regime_title(cfg) == title
    assert [p.final_head for p in phases] == [final_head and p.kind == 3 for p in phases]
    if final_head:  # the loss covers every exit, the new classifier's included
        assert phases[0].weights == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    if "budget=4" in sets:
        assert phases[0].epochs == 4  # the remaining phase gets the whole budget


def test_without_pretrained_weights_phase1_epochs_0_is_still_refused():
    cfg = load_config(None, ["model.backbone=hf:bert", "data.name=debian_sections", "regime=disjoint",
                             "phase1.epochs=0"])
    assert regime_title(cfg) == "disjoint"
    with pytest.raises(ConfigError, match=r"^phase1.epochs is 0, so phase 1 of regime 'disjoint' would train nothing"):
        plan_phases(cfg, num_exits=3)
