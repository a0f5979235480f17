"""The chunked LM-head cross-entropy against torch's F.cross_entropy on whole logits (the outside
reference): loss and the gradients of h and of a tied embedding/LM-head weight, with ignore_index."""
import pytest
import torch
import torch.nn.functional as F

from mambakit.ops import linear_cross_entropy, linear_cross_entropy_ref


@pytest.mark.parametrize("chunk_rows", [1, 7, 64])
@pytest.mark.parametrize("n_ignored", [0, 5])
def test_values_and_gradients_equal_torch_cross_entropy(chunk_rows, n_ignored):
    torch.manual_seed(0)
    n, d, v = 37, 24, 101                       # rows not a multiple of any chunk, odd vocab
    h = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, d, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    targets[torch.randperm(n)[:n_ignored]] = -100
    ours = linear_cross_entropy(h, weight, targets, chunk_rows=chunk_rows)
    g_h, g_w = torch.autograd.grad(ours * 3.0, (h, weight))   # a non-unit upstream gradient
    ref = F.cross_entropy(h @ weight.T, targets, ignore_index=-100)
    r_h, r_w = torch.autograd.grad(ref * 3.0, (h, weight))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_h, r_h, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_w, r_w, rtol=1e-10, atol=1e-12)


def test_fp32_and_bf16_inputs_give_fp32_loss():
    torch.manual_seed(2)
    h, w, t = torch.randn(10, 8), torch.randn(30, 8), torch.randint(0, 30, (10,))
    ref = F.cross_entropy(h @ w.T, t)
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 5e-2)):
        ours = linear_cross_entropy(h.to(dtype), w.to(dtype), t, chunk_rows=3)
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)


def test_tied_embedding_and_head_gradient():
    """The weight is the embedding as well as the head: both gradients add up in one .grad."""
    torch.manual_seed(1)
    emb = torch.nn.Embedding(50, 16)
    ids = torch.randint(0, 50, (2, 9))
    targets = torch.randint(0, 50, (2, 9))
    targets[0, :3] = -100

    def grad(loss_fn):
        emb.zero_grad(set_to_none=True)
        h = torch.tanh(emb(ids)).flatten(0, 1)                       # (18, 16)
        loss_fn(h, emb.weight, targets.flatten()).backward()
        return emb.weight.grad.clone()

    torch.testing.assert_close(grad(lambda h, w, t: linear_cross_entropy(h, w, t, chunk_rows=4)),
                               grad(linear_cross_entropy_ref), rtol=1e-5, atol=1e-6)


def test_a_model_forward_with_targets_equals_cross_entropy_of_its_logits():
    from mambakit.models import build

    torch.manual_seed(0)
    model = build("mamba", "tiny")
    ids = torch.randint(0, model.vocab_size, (2, 13))
    targets = torch.randint(0, model.vocab_size, (2, 13))
    targets[1, 4:] = -100
    loss = model(ids, targets=targets)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    ref = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten())
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_second_backward_is_refused_not_wrong():
    h = torch.randn(6, 4, requires_grad=True)
    loss = linear_cross_entropy(h, torch.randn(9, 4), torch.randint(0, 9, (6,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_bad_targets_are_refused():
    h, w = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="out of range"):
        linear_cross_entropy(h, w, torch.tensor([0, 1, 5, -100]))
    with pytest.raises(ValueError, match="int64 of shape"):
        linear_cross_entropy(h, w, torch.tensor([0, 1]))
