"""Deferred weight gradients of the input-feeding decoder's step loop (nmt/model/deferred.py),
the additive attention's matrix-vector score, and the allocator setting of training."""

from __future__ import annotations

import contextlib
import platform

import pytest
import torch
from torch import nn

import nmt.model.decoder as decoder_module
from nmt.model.attention import AdditiveAttention
from nmt.model.decoder import DecoderState, RNNDecoder
from nmt.model.deferred import deferred_weight_gradients, linear, loop_linears
from nmt.training.allocator import keep_freed_memory

B, T, S, EMB, HID, MEM = 3, 5, 4, 8, 12, 10


def _decoder(cell: str, attention: str, layers: int, gate: bool) -> RNNDecoder:
    torch.manual_seed(0)
    return RNNDecoder(cell, EMB, HID, MEM, layers, attention, 6, True, 0.0, gate).double()


def _run(dec: RNNDecoder, emb: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor,
         deferred: bool, monkeypatch: pytest.MonkeyPatch, steps_in_loss: int = T
         ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Outputs and the gradients of every parameter and input, deferral on or off."""
    with monkeypatch.context() as patch:
        if not deferred:  # autograd's own per-step weight gradients
            patch.setattr(decoder_module, "deferred_weight_gradients",
                          lambda like: contextlib.nullcontext())
        h0 = torch.zeros(dec.num_layers, B, HID, dtype=torch.double)
        state = DecoderState((h0, h0) if dec.paired else h0,
                             torch.zeros(B, HID, dtype=torch.double))
        out, _ = dec(emb, state, dec.project_keys(memory), memory, mask)
    weights = torch.linspace(-1, 1, HID, dtype=torch.double)
    (out[:, :steps_in_loss] * weights).sum().backward()
    grads = [p.grad.clone() for p in dec.parameters()] + [emb.grad.clone(), memory.grad.clone()]
    dec.zero_grad()
    emb.grad = memory.grad = None
    return out.detach(), grads


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    emb = torch.randn(B, T, EMB, dtype=torch.double, requires_grad=True)
    memory = torch.randn(B, S, MEM, dtype=torch.double, requires_grad=True)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[0, -1] = False  # a padded source position
    return emb, memory, mask


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("attention", ["bahdanau", "luong_general"])
@pytest.mark.parametrize(("layers", "gate"), [(1, False), (2, True)])
def test_deferred_gradients_equal_autograd_per_step(cell, attention, layers, gate, monkeypatch):
    dec = _decoder(cell, attention, layers, gate)
    emb, memory, mask = _inputs()
    out_ref, grads_ref = _run(dec, emb, memory, mask, False, monkeypatch)
    out, grads = _run(dec, emb, memory, mask, True, monkeypatch)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-15)
    assert len(grads) == len(grads_ref)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
        assert got.abs().sum() > 0  # every parameter takes part: nothing compared is all zeros


def test_steps_outside_the_loss_and_a_second_backward(monkeypatch):
    """Only the first two steps reach the loss: the later steps' rows are never saved.
    A graph kept with retain_graph gives the same gradients on a second backward."""
    dec = _decoder("lstm", "bahdanau", 1, False)
    emb, memory, mask = _inputs()
    _, grads_ref = _run(dec, emb, memory, mask, False, monkeypatch, steps_in_loss=2)
    _, grads = _run(dec, emb, memory, mask, True, monkeypatch, steps_in_loss=2)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)

    h0 = torch.zeros(1, B, HID, dtype=torch.double)
    out, _ = dec(emb, DecoderState((h0, h0), torch.zeros(B, HID, dtype=torch.double)),
                 dec.project_keys(memory), memory, mask)
    out.sum().backward(retain_graph=True)
    first = [p.grad.clone() for p in dec.parameters()]
    dec.zero_grad()
    out.sum().backward()
    for got, want in zip([p.grad for p in dec.parameters()], first, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_the_block_is_off_without_gradients_or_under_autocast():
    layer = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with torch.no_grad(), deferred_weight_gradients(x) as loop:
        assert loop is None and loop_linears() is None
        assert torch.equal(linear(x, layer), layer(x))
    with torch.autocast("cpu", dtype=torch.bfloat16), deferred_weight_gradients(x) as loop:
        assert loop is None
    with deferred_weight_gradients(x) as loop:
        assert loop is not None and loop_linears() is loop
        assert torch.equal(linear(x, layer), layer(x))  # the same numbers in the forward
    assert loop_linears() is None  # reset on leaving


def test_a_frozen_weight_is_a_plain_linear_map():
    layer = nn.Linear(4, 3)
    layer.weight.requires_grad_(False)
    x = torch.randn(2, 4, requires_grad=True)
    with deferred_weight_gradients(x):
        y = linear(x, layer)
    y.sum().backward()
    assert layer.weight.grad is None
    torch.testing.assert_close(layer.bias.grad, torch.full((3,), 2.0))
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(2, 4))


def test_additive_score_is_the_linear_layer_exactly():
    """Training's score (its own backward) gives v's numbers and v's gradients."""
    torch.manual_seed(0)
    att = AdditiveAttention(12, 10, 16).double()
    query = torch.randn(5, 3, 12, dtype=torch.double, requires_grad=True)
    keys = att.project_keys(torch.randn(5, 7, 10, dtype=torch.double))
    energy = torch.tanh(att.query_proj(query).unsqueeze(2) + keys.unsqueeze(1))
    expected = att.v(energy).squeeze(-1)
    with torch.no_grad():
        assert torch.equal(att.score(query, keys), expected)  # inference: v itself
    got = att.score(query, keys)
    assert torch.equal(got, expected)
    weights = torch.randn_like(got)
    wanted = torch.autograd.grad((expected * weights).sum(), [query, att.v.weight])
    for mine, theirs in zip(torch.autograd.grad((got * weights).sum(), [query, att.v.weight]),
                            wanted, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_keep_freed_memory_on_glibc():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # again: still fine
