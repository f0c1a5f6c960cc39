import pytest

from trl_divergences.toy import BaseModelConfig

#: a smaller architecture than the default, for fast tests
TINY = BaseModelConfig(hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from trl_divergences.toy import build_random_model

    return build_random_model(tmp_path_factory.mktemp("toy") / "model", seed=0, config=TINY)
