"""SplitMultiheadAttention computes nn.MultiheadAttention's function with Linear modules."""

import pytest
import torch
from torch import nn

from nuq.nn.attention import SplitMultiheadAttention, split_attention


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_same_function_as_multihead_attention(batch_first, bias):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, bias=bias, batch_first=batch_first).eval()
    split = SplitMultiheadAttention(mha).eval()

    def seq(n, length):
        return torch.randn(n, length, 16) if batch_first else torch.randn(length, n, 16)

    x, y = seq(3, 5), seq(3, 7)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[:, -2:] = True
    calls = [((x, x, x), {}), ((x, y, y), {"key_padding_mask": pad}), ((x, y, y), {"attn_mask": torch.randn(5, 7)}),
             ((x, y, y), {"attn_mask": torch.rand(5, 7) > 0.7, "need_weights": False}),
             ((x, y, y), {"attn_mask": torch.randn(12, 5, 7), "average_attn_weights": False}),
             ((x, x, x), {"attn_mask": torch.ones(5, 5, dtype=torch.bool).triu(1), "is_causal": True,
                          "need_weights": False})]
    for args, kw in calls:
        a, aw = mha(*args, **kw)
        b, bw = split(*args, **kw)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=str(kw))
        assert (aw is None) == (bw is None)
        if aw is not None:
            torch.testing.assert_close(bw, aw, rtol=1e-5, atol=1e-6)
    u = torch.randn(5, 16)  # unbatched
    torch.testing.assert_close(split(u, u, u)[0], mha(u, u, u)[0], rtol=1e-5, atol=1e-6)


def test_split_attention_replaces_what_it_supports():
    net = nn.Sequential(nn.Linear(4, 16))
    net.add_module("attn", nn.MultiheadAttention(16, 2))
    net.add_module("kv", nn.MultiheadAttention(16, 2, add_bias_kv=True))
    split_attention(net)
    assert isinstance(net.attn, SplitMultiheadAttention) and isinstance(net.attn.q_proj, nn.Linear)
    assert type(net.kv) is nn.MultiheadAttention  # left as is; prepare refuses its out_proj by name
    with pytest.raises(ValueError, match="add_bias_kv"):
        SplitMultiheadAttention(net.kv)
