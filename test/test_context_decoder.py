"""decoder: stateless_context: the last context_size labels, the same in training and in search."""

import pytest
import torch
from espnet2.asr_transducer.beam_search_transducer import Hypothesis

import espnet_rwkv.espnet  # noqa: F401  (registers the plugin)
from espnet_rwkv.asr.context_decoder import ContextDecoder


def decoder(context_size=2):
    torch.manual_seed(0)
    return ContextDecoder(12, 16, context_size).eval()


@pytest.mark.parametrize("context_size", [1, 2, 3])
def test_search_scores_equal_the_training_outputs(context_size):
    d = decoder(context_size)
    labels = torch.tensor([[0, 5, 5, 7, 5, 5, 5]])  # blank-prefixed, as transducer training feeds it
    with torch.no_grad():
        out = d(labels)[0]
        for u in range(labels.size(1)):
            prefix = labels[0, : u + 1].tolist()
            torch.testing.assert_close(d.score(prefix)[0], out[u])
            hyp = Hypothesis(score=0.0, yseq=prefix, dec_state=None)
            torch.testing.assert_close(d.batch_score([hyp, hyp])[0][1], out[u])


def test_a_repeated_label_changes_the_output_only_within_the_context():
    d = decoder(2)
    with torch.no_grad():
        once, twice = d.score([0, 3, 5])[0], d.score([0, 5, 5])[0]
        assert (once - twice).abs().max() > 1e-3  # "5" after "3" is not "5" after "5"
        d.score_cache.clear()
        torch.testing.assert_close(d.score([0, 9, 3, 5])[0], once)  # the label before the context is not read


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"context_size": 0}, "context_size must be >= 1"),
        ({"embed_size": 18}, "multiple of 4"),
        ({"embed_dropout_rate": 1.0}, r"embed_dropout_rate must be in \[0, 1\)"),
    ],
)
def test_bad_config_names_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ContextDecoder(12, **{"embed_size": 16, **kwargs})
