"""The official CLIP-OCR decoder (wzx99/CLIPOCR's `strhub`: PARSeq's `DecoderLayer` and the
`BaseSeq.decode` / `StageDecoder` / greedy `forward` loop), restated plainly and compared with
clipocr's `OfficialLayer` and `Student` on the same weights and inputs (DESIGN §6).

Nothing here calls clipocr's decoder code on the reference side: the modules below restate the
official computation with `nn.MultiheadAttention` (PARSeq's attention), so the state dicts are
PARSeq's key for key and load into clipocr's modules unchanged.

- content stream: BOS's embedding (× √dim) with no position, then ``c_i``'s embedding × √dim +
  position query ``i − 1``; dropout; never updated (the official code comments the update out);
- query stream: position queries ``0..T−1``; per layer ``q += SA(norm_q(q), norm_c(content))``
  (causal over content ``0..t``, key-padding mask over PAD/EOS), ``q += CA(norm1(q), memory)``,
  ``q += MLP(norm2(q))`` (GELU); stage i = the final LayerNorm of the query after layer i;
- training: the forward permutation's masks as `generate_attn_masks` builds them, with the
  official target convention (``BOS c1 … cL EOS PAD …``, ``tgt_in = tgt[:, :-1]``);
- inference: greedy, recomputing the content stream each step with one query at position i.

Compared in float64 to the issue's 1e-6 (the measured difference is ≈ 1e-14, so the two compute
the same function), and in float32, the official code's dtype, to float32 rounding (≈ 3e-6 on
outputs of magnitude 4 for the `small` preset: a different summation order, not a different
computation).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as tfn
from torch import Tensor, nn

from clipocr.train_student.model import Student, student_config
from clipocr.train_student.official_decoder import OfficialLayer

# The official code passes a float query mask and a bool padding mask, which PyTorch now warns of.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
LABELS = ["abc", "hello", "x", "0a9z"]
TOL = {torch.float64: {"atol": 1e-6, "rtol": 0.0}, torch.float32: {"atol": 1e-5, "rtol": 1e-5}}


# the reference, written out -------------------------------------------------------------------
class RefLayer(nn.Module):
    """PARSeq's pre-LN two-stream layer as CLIP-OCR runs it: the query stream only."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(dim, ff), nn.Linear(ff, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.norm_q, self.norm_c = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))

    def forward(self, query, content, memory, query_mask=None, key_padding_mask=None) -> Tensor:
        kv = self.norm_c(content)
        sa = self.self_attn(self.norm_q(query), kv, kv, attn_mask=query_mask,
                            key_padding_mask=key_padding_mask)[0]  # fmt: skip
        x = query + self.dropout1(sa)
        x = x + self.dropout2(self.cross_attn(self.norm1(x), memory, memory)[0])
        mlp = self.linear2(self.dropout(tfn.gelu(self.linear1(self.norm2(x)))))
        return x + self.dropout3(mlp)  # the content stream is returned unchanged (not updated)


class RefDecoder(nn.Module):
    """BaseSeq's decoder side: token embedding, position queries, the layers, norm, head."""

    def __init__(self, charset_size, dim, heads, mlp_ratio, depth, max_len, dropout) -> None:
        super().__init__()
        self.dim = dim
        self.text_embed = nn.Embedding(charset_size, dim)
        self.pos_queries = nn.Parameter(torch.randn(1, max_len + 1, dim) * 0.02)
        self.layers = nn.ModuleList(RefLayer(dim, heads, dim * mlp_ratio, dropout)
                                    for _ in range(depth))  # fmt: skip
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, charset_size - 2)  # no BOS, no PAD
        self.drop = nn.Dropout(dropout)

    def emb(self, tokens: Tensor) -> Tensor:
        return math.sqrt(self.dim) * self.text_embed(tokens)

    def decode(self, tgt_in, memory, padding_mask=None, query=None, query_mask=None) -> list:
        n, length = tgt_in.shape
        null_ctx = self.emb(tgt_in[:, :1])
        rest = self.pos_queries[:, : length - 1] + self.emb(tgt_in[:, 1:])
        content = self.drop(torch.cat([null_ctx, rest], dim=1))
        if query is None:
            query = self.pos_queries[:, :length].expand(n, -1, -1)
        query = self.drop(query)
        stages = []
        for layer in self.layers:
            query = layer(query, content, memory, query_mask, padding_mask)
            stages.append(self.norm(query))
        return stages

    @staticmethod
    def forward_perm_query_mask(size: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """`generate_attn_masks` for the identity permutation over ``size`` = T + 1 positions:
        each later position masked, then "self" masked, the query mask = rows 1.., cols ..−1."""
        mask = torch.zeros(size, size, dtype=dtype)
        for i in range(size):
            mask[i, i + 1 :] = float("-inf")
        mask[torch.eye(size, dtype=torch.bool)] = float("-inf")
        return mask[1:, :-1]

    def train_stages(self, tgt: Tensor, memory: Tensor, pad: int, eos: int) -> list[Tensor]:
        tgt_in = tgt[:, :-1]
        padding = (tgt_in == pad) | (tgt_in == eos)
        query_mask = self.forward_perm_query_mask(tgt.shape[1], memory.dtype)
        return self.decode(tgt_in, memory, padding, query_mask=query_mask)

    def greedy(self, memory: Tensor, steps: int, bos: int, pad: int, eos: int) -> Tensor:
        """`BaseSeq.forward` at test time: logits (B, T, C), T ≤ steps."""
        bs = memory.shape[0]
        pos = self.pos_queries[:, :steps].expand(bs, -1, -1)
        causal = torch.triu(torch.full((steps, steps), float("-inf"), dtype=memory.dtype), 1)
        tgt_in = torch.full((bs, steps), pad, dtype=torch.long)
        tgt_in[:, 0] = bos
        logits = []
        for i in range(steps):
            j = i + 1
            out = self.decode(tgt_in[:, :j], memory, query=pos[:, i:j],
                              query_mask=causal[i:j, :j])[-1]  # fmt: skip
            p_i = self.head(out)
            logits.append(p_i)
            if j < steps:
                tgt_in[:, j] = p_i.squeeze(1).argmax(-1)
                if (tgt_in == eos).any(dim=-1).all():
                    break
        return torch.cat(logits, dim=1)


def official_targets(student: Student, labels: list[str]) -> Tensor:
    """PARSeq's tokenizer output: ``BOS c1 … cL EOS PAD …`` (width = longest + 2)."""
    cs = student.charset
    tgt = torch.full((len(labels), max(map(len, labels)) + 2), cs.pad_id)
    for row, text in enumerate(labels):
        ids = [cs.bos_id, *cs.encode(text), cs.eos_id]
        tgt[row, : len(ids)] = torch.tensor(ids)
    return tgt


def reference_for(student: Student, seed: int = 0) -> RefDecoder:
    """A reference decoder with random weights (LayerNorms too), loaded into `student`."""
    cfg = student.cfg
    torch.manual_seed(seed)
    ref = RefDecoder(student.charset.pad_id + 1, cfg.enc_dim, cfg.dec_heads,
                     int(cfg.dec_mlp_ratio), cfg.dec_depth, cfg.max_len, cfg.dropout)  # fmt: skip
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    renamed = {
        "text_embed.weight": "tok_embed.weight",
        "norm.": "dec_norm.",
        "layers.": "dec_layers.",
    }
    state = {}
    for key, value in ref.state_dict().items():
        for old, new in renamed.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        state[key] = value
    missing, unexpected = student.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("encoder.") for k in missing)
    return ref.eval()


@pytest.fixture(scope="module")
def students() -> dict[str, tuple[Student, RefDecoder]]:
    out = {}
    for preset in ("test", "small"):
        torch.manual_seed(0)
        student = Student(student_config(preset)).eval()
        assert student.cfg.dec_layer == "official"
        out[preset] = student, reference_for(student)
    return out


CASES = [("test", torch.float64), ("small", torch.float64), ("small", torch.float32)]


@pytest.fixture(params=CASES, ids=lambda c: f"{c[0]}-{str(c[1])[6:]}")
def pair(request, students) -> tuple[Student, RefDecoder, dict]:
    preset, dtype = request.param
    student, ref = students[preset]
    return copy.deepcopy(student).to(dtype), copy.deepcopy(ref).to(dtype), TOL[dtype]


# the comparisons ------------------------------------------------------------------------------
def test_an_official_layer_state_dict_loads_key_for_key_and_computes_the_same() -> None:
    torch.manual_seed(0)
    dim, heads, t, n = 64, 4, 7, 2
    ref = RefLayer(dim, heads, 4 * dim, 0.1).eval()
    ours = OfficialLayer(dim, heads, 4.0, 0.1).eval()
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ours.load_state_dict(ref.state_dict(), strict=True)
    query, content, memory = torch.randn(n, t, dim), torch.randn(n, t, dim), torch.randn(n, 9, dim)
    padding = torch.zeros(n, t, dtype=torch.bool)
    padding[0, 5:] = True  # sample 0: 4 characters, then EOS/PAD
    want = ref(query, content, memory, RefDecoder.forward_perm_query_mask(t + 1), padding)
    keep = torch.ones(t, t, dtype=torch.bool).tril() & ~padding[:, None, None, :]
    got = ours(query, content, ours.cross_attn.keys_values(memory), keep)
    torch.testing.assert_close(got, want, **TOL[torch.float32])


def test_teacher_forced_stages_match_the_official_decoder(pair) -> None:
    """Every stage at every position, PAD/EOS positions included (the official ``tgt_in`` holds
    EOS where clipocr's holds PAD: both are masked keys, so the outputs agree)."""
    student, ref, tol = pair
    cs = student.charset
    dtype = student.pos_queries.dtype
    memory = torch.randn(len(LABELS), student.cfg.num_tokens, student.cfg.enc_dim, dtype=dtype)
    with torch.no_grad():
        want = ref.train_stages(official_targets(student, LABELS), memory, cs.pad_id, cs.eos_id)
        tgt_in, _ = cs.batch_targets(LABELS)
        got = student.decode(memory, tgt_in)
    assert len(got) == len(want) == student.cfg.dec_depth
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **tol)
    torch.testing.assert_close(student.head(got[-1]), ref.head(want[-1]), **tol)


@pytest.mark.parametrize("pair", CASES[::2], indirect=True, ids=["test-float64", "small-float32"])
def test_greedy_decoding_matches_the_official_loop(pair) -> None:
    """`Student.generate` (K/V cache) against the official loop (recomputation): the same ids
    and max-probabilities up to each sample's EOS."""
    student, ref, tol = pair
    cs = student.charset
    torch.manual_seed(1)
    dtype = student.pos_queries.dtype
    memory = torch.randn(4, student.cfg.num_tokens, student.cfg.enc_dim, dtype=dtype)
    student.encode = lambda images: ([], memory)  # type: ignore[method-assign]
    try:
        ids, probs = student.generate(torch.zeros(len(memory), 3, 32, 128))
    finally:
        del student.encode
    with torch.no_grad():
        logits = ref.greedy(memory, student.cfg.max_len + 1, cs.bos_id, cs.pad_id, cs.eos_id)
    want_p, want_ids = logits.softmax(-1).max(-1)
    want_p = want_p.float()  # `generate` returns float32 probabilities
    assert ids.shape == want_ids.shape
    lengths = []
    for row in range(len(memory)):
        hits = (want_ids[row] == cs.eos_id).nonzero()
        end = int(hits[0]) + 1 if len(hits) else want_ids.shape[1]
        lengths.append(end)
        assert torch.equal(ids[row, :end], want_ids[row, :end])
        torch.testing.assert_close(probs[row, :end], want_p[row, :end], **tol)
    assert max(lengths) > 2  # the comparison covered several steps


def test_init_is_parseqs() -> None:
    """PARSeq's `init_weights` (trunc-normal 0.02 for Linear/Embedding) leaves the packed q/k/v
    projection at `nn.MultiheadAttention`'s xavier-uniform: std √(6 / 4d) / √3 at d = 384."""
    torch.manual_seed(0)
    student = Student(student_config("small"))
    layer = student.dec_layers[0]
    assert isinstance(layer, OfficialLayer)
    xavier = math.sqrt(6 / (4 * 384)) / math.sqrt(3)
    assert abs(float(layer.self_attn.in_proj_weight.detach().std()) - xavier) < 1e-3
    assert float(layer.self_attn.in_proj_bias.detach().abs().max()) == 0.0
    assert abs(float(layer.linear1.weight.detach().std()) - 0.02) < 1e-3
    assert abs(float(layer.self_attn.out_proj.weight.detach().std()) - 0.02) < 1e-3
