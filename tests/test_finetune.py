"""graphchallenge.finetune: the FSSL library's public names under the module's earlier name."""

from graphchallenge import finetune, fssl


def test_finetune_offers_every_public_fssl_name():
    assert finetune.__all__ == fssl.__all__
    for name in fssl.__all__:
        assert getattr(finetune, name) is getattr(fssl, name), name
    assert finetune.finetune_challenge is fssl.experiment.finetune_challenge
