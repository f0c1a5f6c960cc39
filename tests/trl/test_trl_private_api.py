"""The private TRL 1.16 names our adapter overrides or reads. An upgrade that renames or re-signs them must fail here
(the behaviour behind them is pinned by test_parity and test_full_estimator)."""

from __future__ import annotations

import inspect

import trl
from trl import GRPOTrainer
from trl.trainer import utils as trl_utils


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_trl_version_is_pinned_range():
    assert trl.__version__.startswith("1.16.")


def test_overridden_private_methods_keep_their_signatures():
    assert _params(GRPOTrainer._generate_and_score_completions) == ["self", "inputs"]
    assert _params(GRPOTrainer._compute_loss) == ["self", "model", "inputs"]
    assert _params(GRPOTrainer._get_per_token_logps_and_entropies)[:5] == [
        "self",
        "model",
        "input_ids",
        "attention_mask",
        "logits_to_keep",
    ]


def test_beta_is_read_from_the_instance_in_rollout_and_loss():
    """We switch TRL's k3 off by setting ``self.beta`` to 0 around these calls."""
    for fn in (GRPOTrainer._generate_and_score_completions, GRPOTrainer._compute_loss):
        assert "self.beta != 0.0" in inspect.getsource(fn)


def test_fused_head_and_adapter_helpers_exist():
    assert "fused_lm_head" in inspect.getsource(trl_utils.add_fused_lm_head)
    assert callable(trl_utils.use_adapter)
    src = inspect.getsource(trl_utils.add_fused_lm_head)
    assert "last_hidden_state[:, :-1]" in src  # our hidden-state alignment assumes TRL's shift
