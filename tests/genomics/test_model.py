"""DNAModel: reverse-complement equivariance for any mixer (Caduceus-PS), post-hoc conjoining, causality."""
from __future__ import annotations

import copy

import pytest
import torch

from apps.genomics import tokenizer
from apps.genomics.model import COMPLEMENT_BASES, DNAModel

MIXERS = {"attention": {"causal": False, "num_heads": 2}, "mamba2": {"d_state": 8}, "gated_deltanet": {}, "mlstm": {"num_heads": 2}}


def model(mixer: str, head: str, rc: str = "shared", bidirectional: bool = False) -> DNAModel:
    torch.manual_seed(0)
    return DNAModel({"name": mixer, "options": MIXERS[mixer]}, mixer, d_model=16, depth=2, bidirectional=bidirectional,
                    rc=rc, head=head, num_classes=3).eval()


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_rc_shared_output_on_reverse_complement_is_reverse_complemented_output(mixer):
    tokens = torch.randint(0, 5, (2, 37))
    rc = tokenizer.reverse_complement(tokens)
    with torch.no_grad():
        per_base = model(mixer, "per_base")
        torch.testing.assert_close(per_base(rc), per_base(tokens).flip(1))
        bases = model(mixer, "bases")
        torch.testing.assert_close(bases(rc), bases(tokens).flip(1)[..., COMPLEMENT_BASES])
        sequence = model(mixer, "sequence")
        torch.testing.assert_close(sequence(rc), sequence(tokens))
        torch.testing.assert_close(sequence.embed(rc), sequence.embed(tokens))


def test_plain_model_is_not_rc_equivariant_and_conjoining_makes_it_so_at_evaluation():
    tokens = torch.randint(0, 4, (2, 40))
    rc = tokenizer.reverse_complement(tokens)
    with torch.no_grad():
        plain = model("mamba2", "sequence", rc="none", bidirectional=True)
        assert not torch.allclose(plain(rc), plain(tokens))
        conjoined = model("mamba2", "sequence", rc="conjoin", bidirectional=True)
        torch.testing.assert_close(conjoined(rc), conjoined(tokens))
        conjoined.train()
        assert torch.allclose(conjoined(tokens), plain.train()(tokens))  # trained on one strand


@pytest.mark.parametrize("head", ["sequence", "per_base", "bases"])
def test_concat_head_sees_the_strands_swapped_on_the_reverse_complement(head):
    """rc_head=concat: the output on the reverse complement is the output with the head's two strand halves swapped
    (flipped in time for per-position heads), and it differs from the output on the given strand."""
    tokens = torch.randint(0, 4, (2, 33))
    torch.manual_seed(0)
    concat = DNAModel({"name": "mamba2", "options": MIXERS["mamba2"]}, "mamba2", d_model=16, depth=2, rc="shared",
                      rc_head="concat", head=head, num_classes=3).eval()
    swapped = copy.deepcopy(concat)
    with torch.no_grad():
        swapped.head.weight.copy_(torch.cat(concat.head.weight.chunk(2, dim=1)[::-1], dim=1))
        on_rc, expected = concat(tokenizer.reverse_complement(tokens)), swapped(tokens)
        torch.testing.assert_close(on_rc, expected if head == "sequence" else expected.flip(1))
        assert not torch.allclose(on_rc, concat(tokens) if head == "sequence" else concat(tokens).flip(1), atol=1e-4)


def test_rc_shared_has_the_parameters_of_the_plain_model():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model("mamba2", "sequence", rc="shared")) == count(model("mamba2", "sequence", rc="none"))


def test_causal_model_depends_on_the_past_only():
    lm = model("gated_deltanet", "bases", rc="none")
    assert lm.causal and not model("gated_deltanet", "bases", rc="shared").causal
    tokens = torch.randint(0, 4, (1, 30))
    changed = tokens.clone()
    changed[0, 20:] = (changed[0, 20:] + 1) % 4
    with torch.no_grad():
        torch.testing.assert_close(lm(tokens)[:, :20], lm(changed)[:, :20])


def test_bad_options_and_inputs_are_named():
    with pytest.raises(ValueError, match="model.rc='both' is not one of none, shared, conjoin"):
        model("attention", "sequence", rc="both")
    with pytest.raises(ValueError, match="model.rc_head='sum' is not one of average, concat"):
        DNAModel({"name": "attention", "options": MIXERS["attention"]}, "attention", rc="shared", rc_head="sum")
    with pytest.raises(ValueError, match="model.rc_head=concat reads both strands in training and needs model.rc=shared"):
        DNAModel({"name": "attention", "options": MIXERS["attention"]}, "attention", rc="conjoin", rc_head="concat")
    with pytest.raises(ValueError, match=r"tokens must be integer ids of shape \(batch, length\)"):
        model("attention", "sequence")(torch.randn(2, 10))
