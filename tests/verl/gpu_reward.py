"""verl custom reward for the GPU smoke run: the embedded toy task (``S n =`` -> ``a b`` with a + b = n)."""

from trl_divergences.toy.task import is_correct


def compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float:
    return float(is_correct(ground_truth, solution_str))
