"Tests of dino_course.dino: the loss against lightly and by hand, statistics, head, multi-crop, teacher, schedules."
import math, warnings
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import timm

from dino_course.dino import (DINOLoss, DINOHead, MultiCropWrapper, build_teacher, update_teacher, cosine_scheduler,
                              get_params_groups, set_lr_wd, clip_gradients, cancel_gradients_last_layer, dino_step,
                              DINO, entropy, kl_divergence, dino_stats, teacher_temp_schedule, sinkhorn_knopp)

torch.set_num_threads(2)


def _logits(n, K, gen, scale=2.0, dtype=torch.float64):
    # a per-dimension offset so that centering matters
    return torch.randn(n, K, generator=gen, dtype=dtype) * scale + torch.linspace(0, 3, K, dtype=dtype)


# ---------------------------------------------------------------- the loss
@pytest.mark.parametrize('ncrops,temps', [(2, (0.04, 0.07)), (6, (0.04, 0.07)), (4, (0.1, 0.04))])
def test_loss_matches_lightly(ncrops, temps):
    from lightly.loss import DINOLoss as LightlyDINOLoss
    K, B, warm, nep = 64, 8, 3, 10
    ours = DINOLoss(K, ncrops, temps[0], temps[1], warm, nep, student_temp=0.1, center_momentum=0.9).double()
    ref = LightlyDINOLoss(K, temps[0], temps[1], warm, 0.1, 0.9).double()
    gen = torch.Generator().manual_seed(ncrops)
    worst = 0.0
    for epoch in [0, 1, 2, 3, 5, 9]:                       # warm-up, its end, and the constant part
        s, t = _logits(ncrops * B, K, gen), _logits(2 * B, K, gen)
        a = ours(s, t, epoch)
        # lightly 1.6: forward(teacher_out: list, student_out: list, teacher_temp=None, epoch=None)
        b = ref(list(t.chunk(2)), list(s.chunk(ncrops)), epoch=epoch)
        worst = max(worst, (a - b).abs().item(), (ours.center - ref.center.reshape(1, K)).abs().max().item())
    assert worst < 1e-6, worst
    assert ours.center.shape == (1, K)


def test_loss_matches_lightly_float32_and_gradients():
    from lightly.loss import DINOLoss as LightlyDINOLoss
    K, B, nc = 32, 4, 4
    ours, ref = DINOLoss(K, nc, 0.04, 0.04, 0, 5), LightlyDINOLoss(K, 0.04, 0.04, 0, 0.1, 0.9)
    gen = torch.Generator().manual_seed(1)
    s = _logits(nc * B, K, gen, dtype=torch.float32).requires_grad_()
    t = _logits(2 * B, K, gen, dtype=torch.float32)
    a = ours(s, t, 0)
    ga, = torch.autograd.grad(a, s)
    s2 = s.detach().clone().requires_grad_()
    b = ref(list(t.chunk(2)), list(s2.chunk(nc)), epoch=0)
    gb, = torch.autograd.grad(b, s2)
    assert abs(a.item() - b.item()) < 1e-5 * abs(b.item())
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7)


def test_loss_two_crops_by_hand():
    "B=1, K=2, two crops: loss = (H(Pt1, Ps2) + H(Pt2, Ps1)) / 2 with explicit softmax formulas."
    tps, tpt, m = 0.1, 0.05, 0.9
    loss_fn = DINOLoss(2, 2, tpt, tpt, 0, 1, student_temp=tps, center_momentum=m).double()
    loss_fn.center.copy_(torch.tensor([[0.2, -0.1]], dtype=torch.float64))
    s = torch.tensor([[0.3, 0.1], [-0.2, 0.4]], dtype=torch.float64)     # student crops 1, 2
    t = torch.tensor([[0.5, 0.45], [0.0, 0.1]], dtype=torch.float64)     # teacher crops 1, 2

    def softmax2(a, b, T):   # P(first), P(second) of a 2-way softmax at temperature T
        ea, eb = math.exp(a / T), math.exp(b / T)
        return ea / (ea + eb), eb / (ea + eb)

    c = (0.2, -0.1)
    pt1 = softmax2(0.5 - c[0], 0.45 - c[1], tpt)
    pt2 = softmax2(0.0 - c[0], 0.1 - c[1], tpt)
    ps1 = softmax2(0.3, 0.1, tps)
    ps2 = softmax2(-0.2, 0.4, tps)
    H = lambda p, q: -(p[0] * math.log(q[0]) + p[1] * math.log(q[1]))
    expected = (H(pt1, ps2) + H(pt2, ps1)) / 2
    got = loss_fn(s, t, 0).item()
    assert abs(got - expected) < 1e-12, (got, expected)
    # center: m * C + (1 - m) * mean of the teacher outputs
    expected_c = [m * c[0] + (1 - m) * 0.25, m * c[1] + (1 - m) * 0.275]
    torch.testing.assert_close(loss_fn.center, torch.tensor([expected_c], dtype=torch.float64), rtol=0, atol=1e-15)


def test_loss_temperature_schedule_and_options():
    loss = DINOLoss(8, 4, 0.04, 0.07, 30, 100)
    sched = loss.teacher_temp_schedule
    assert len(sched) == 100 and sched[0] == 0.04 and sched[29] == pytest.approx(0.07) and np.all(sched[30:] == 0.07)
    assert loss.teacher_temp(15) == sched[15]
    assert loss.teacher_temp(14.5) == pytest.approx((sched[14] + sched[15]) / 2)    # fractional epochs interpolate
    assert loss.teacher_temp(500) == pytest.approx(0.07)                            # past the end: constant
    # no warm-up
    assert np.all(DINOLoss(8, 4, 0.04, 0.07, 0, 10).teacher_temp_schedule == 0.07)
    assert np.allclose(teacher_temp_schedule(0.04, 0.07, 4, 4), [0.04, 0.05, 0.06, 0.07, 0.07])
    # no centering: the center stays at zero
    nc = DINOLoss(8, 4, 0.04, 0.04, 0, 10, use_centering=False)
    nc(torch.randn(16, 8), torch.randn(8, 8) + 5, 0)
    assert torch.all(nc.center == 0)
    # the teacher never gets a gradient through the loss
    s, t = torch.randn(16, 8, requires_grad=True), torch.randn(8, 8, requires_grad=True)
    DINOLoss(8, 4, 0.04, 0.04, 0, 10)(s, t, 0).backward()
    assert t.grad is None and s.grad is not None


def test_loss_shape_errors():
    loss = DINOLoss(8, 4, 0.04, 0.04, 0, 10)
    with pytest.raises(ValueError, match='multiple of ncrops'):
        loss(torch.randn(10, 8), torch.randn(4, 8), 0)
    with pytest.raises(ValueError, match='global crops'):
        loss(torch.randn(8, 8), torch.randn(3, 8), 0)
    with pytest.raises(ValueError, match='at least 2 crops'):
        DINOLoss(8, 1, 0.04, 0.04, 0, 10)


# ---------------------------------------------------------------- statistics
def test_stats_identity_and_direct_computation():
    K, B, nc = 50, 6, 5
    loss_fn = DINOLoss(K, nc, 0.04, 0.04, 0, 3)
    gen = torch.Generator().manual_seed(3)
    s, t = _logits(nc * B, K, gen, dtype=torch.float32), _logits(2 * B, K, gen, dtype=torch.float32)
    center = loss_fn.center.clone()
    loss = loss_fn(s, t, 0)
    st = loss_fn.last_stats
    # H = h + KL (eq. 9), and the cross-entropy is the loss
    assert abs(float(st['cross_entropy']) - (float(st['teacher_entropy']) + float(st['kl']))) < 1e-5
    assert abs(float(st['cross_entropy']) - loss.item()) < 1e-5
    assert st['teacher_temp'] == 0.04
    # direct computation, pair by pair, with entropy() and kl_divergence()
    # in float64: float32 student probabilities at temperature 0.1 underflow to 0 (log 0 = -inf)
    pt = F.softmax((t.double() - center.double()) / 0.04, -1).chunk(2)
    ps = F.softmax(s.double() / 0.1, -1).chunk(nc)
    h = torch.stack([entropy(p) for p in pt]).mean()
    kls = [kl_divergence(pt[i], ps[j]).mean() for i in range(2) for j in range(nc) if i != j]
    ces = [-(pt[i] * ps[j].log()).sum(-1).mean() for i in range(2) for j in range(nc) if i != j]
    assert abs(float(st['teacher_entropy']) - h.item()) < 1e-5
    assert abs(float(st['kl']) - torch.stack(kls).mean().item()) < 1e-4
    assert abs(loss.item() - torch.stack(ces).mean().item()) < 1e-4
    # standalone: uniform and one-hot entropy, KL(p||p) = 0, KL >= 0
    assert entropy(torch.full((K,), 1 / K)).item() == pytest.approx(math.log(K))
    assert entropy(F.one_hot(torch.tensor(3), K).float()).item() == 0
    p, q = F.softmax(torch.randn(4, K), -1), F.softmax(torch.randn(4, K), -1)
    assert kl_divergence(p, p).abs().max() < 1e-6 and (kl_divergence(p, q) > 0).all()
    # dino_stats on probabilities alone gives the same numbers
    st2 = dino_stats(torch.stack(pt).float(), F.log_softmax(s / 0.1, -1).unflatten(0, (nc, B)))
    for k in ('teacher_entropy', 'kl', 'cross_entropy'):
        assert abs(float(st2[k]) - float(st[k])) < 1e-4


# ---------------------------------------------------------------- head
def _reference_head(in_dim, out_dim, hidden, bottleneck):
    "The reference's DINOHead structure, with the deprecated torch.nn.utils.weight_norm."
    class RefHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                     nn.Linear(hidden, bottleneck))
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
            self.last_layer.weight_g.data.fill_(1)

        def forward(self, x):
            return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))
    return RefHead()


def test_head_loads_reference_weight_norm_names():
    torch.manual_seed(0)
    ref = _reference_head(24, 40, 32, 8)
    with torch.no_grad(): ref.last_layer.weight_g.uniform_(0.5, 2)     # a non-trivial norm, as after training
    sd = ref.state_dict()
    assert 'last_layer.weight_g' in sd and 'last_layer.weight_v' in sd
    head = DINOHead(24, 40, hidden_dim=32, bottleneck_dim=8, norm_last_layer=False)
    head.load_state_dict(sd)                                            # strict: every key is used
    x = torch.randn(5, 24)
    torch.testing.assert_close(head(x), ref(x))
    # nested under a wrapper too (prefix 'head.')
    wrapped = MultiCropWrapper(nn.Identity(), DINOHead(24, 40, hidden_dim=32, bottleneck_dim=8))
    wrapped.load_state_dict({f'head.{k}': v for k, v in sd.items()})
    torch.testing.assert_close(wrapped(x), ref(x))


def test_head_structure():
    head = DINOHead(16, 100, hidden_dim=32, bottleneck_dim=8)
    g = head.last_layer.parametrizations.weight.original0
    assert torch.all(g == 1) and not g.requires_grad                     # norm_last_layer fixes g = 1
    assert DINOHead(16, 100, norm_last_layer=False).last_layer.parametrizations.weight.original0.requires_grad
    # every row of the last layer has norm g = 1
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(100))
    assert head(torch.randn(3, 16)).shape == (3, 100)
    assert isinstance(DINOHead(16, 10, nlayers=1).mlp, nn.Linear)
    assert any(isinstance(m, nn.BatchNorm1d) for m in DINOHead(16, 10, use_bn=True).mlp)
    lin = [m for m in DINOHead(512, 10).mlp if isinstance(m, nn.Linear)]
    assert [m.out_features for m in lin] == [2048, 2048, 256]
    # trunc_normal std .02 (truncated at +-2 absolute, as the reference: effectively a plain normal)
    assert abs(lin[0].weight.std().item() - 0.02) < 0.002 and lin[0].bias.abs().max() == 0


# ---------------------------------------------------------------- multi-crop
def _vit_backbone():
    try:
        from dino_course.vit import vit_tiny
        return vit_tiny(patch_size=8, img_size=32, depth=2), 'dino_course.vit'
    except Exception:
        return timm.create_model('vit_tiny_patch16_224', patch_size=8, img_size=32, num_classes=0, depth=2,
                                 dynamic_img_size=True), 'timm'


@pytest.mark.parametrize('kind', ['resnet18', 'vit'])
def test_multicrop_groups_by_resolution(kind):
    torch.manual_seed(0)
    if kind == 'resnet18': backbone, dim = timm.create_model('resnet18', num_classes=0), 512
    else:
        backbone, _ = _vit_backbone()
        dim = backbone.embed_dim
    model = MultiCropWrapper(backbone, DINOHead(dim, 32, hidden_dim=64, bottleneck_dim=16)).eval()
    crops = [torch.randn(2, 3, 32, 32) for _ in range(2)] + [torch.randn(2, 3, 16, 16) for _ in range(3)]
    calls = []
    hook = model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        out = model(crops)
        hook.remove()
        per_crop = torch.cat([model.head(model.backbone(c)) for c in crops])
    assert calls == [4, 6]                                   # one backbone pass per resolution
    assert out.shape == (10, 32)
    torch.testing.assert_close(out, per_crop, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- teacher
def _small_student():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return MultiCropWrapper(backbone, DINOHead(8, 16, hidden_dim=16, bottleneck_dim=8))


def test_ema_update_math():
    student = _small_student()
    teacher = build_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in student.parameters(): p.add_(torch.randn_like(p))
    before = [p.clone() for p in teacher.parameters()]
    m = 0.9
    update_teacher(student, teacher, m)
    for t0, t1, s in zip(before, teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t1, m * t0 + (1 - m) * s, rtol=0, atol=1e-6)
    # buffers: the teacher's own by default (reference), the student's with copy_buffers=True
    student.backbone[1].running_mean.fill_(3.0)
    update_teacher(student, teacher, m)
    assert torch.all(teacher.backbone[1].running_mean == 0)
    update_teacher(student, teacher, m, copy_buffers=True)
    assert torch.all(teacher.backbone[1].running_mean == 3)
    with pytest.raises(ValueError, match='build_teacher'):
        update_teacher(student, nn.Linear(2, 2), m)


def test_dino_step_teacher_no_grad_and_freeze_last_layer():
    student = _small_student()
    teacher = build_teacher(student)
    loss_fn = DINOLoss(16, 4, 0.04, 0.04, 0, 4)
    opt = torch.optim.AdamW(get_params_groups(student), lr=1e-2)
    crops = [torch.randn(4, 3, 16, 16) for _ in range(2)] + [torch.randn(4, 3, 8, 8) for _ in range(2)]
    last = student.head.last_layer.parametrizations.weight.original1
    last0, mlp0 = last.detach().clone(), student.head.mlp[0].weight.detach().clone()
    t0 = [p.detach().clone() for p in teacher.parameters()]
    loss = dino_step(student, teacher, loss_fn, crops, opt, epoch=0, momentum=0.5, freeze_last_layer=1, clip_grad=3.0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(p.grad is None for p in teacher.parameters())          # teacher never receives gradients
    assert torch.equal(last, last0)                                   # frozen during epoch 0
    assert not torch.equal(student.head.mlp[0].weight, mlp0)          # the rest moved
    assert any(not torch.equal(a, b) for a, b in zip(t0, teacher.parameters()))   # and the teacher followed
    dino_step(student, teacher, loss_fn, crops, opt, epoch=1, momentum=0.5, freeze_last_layer=1)
    assert not torch.equal(last, last0)                               # epoch 1: the last layer trains
    # the bundled module: same step, and a state dict holding student, teacher and center
    model = DINO(_small_student(), DINOLoss(16, 4, 0.04, 0.04, 0, 4))
    opt = torch.optim.SGD(get_params_groups(model.student), lr=0.1)
    model.step(crops, opt, epoch=0, momentum=0.9)
    keys = model.state_dict().keys()
    assert 'loss.center' in keys and any(k.startswith('teacher.') for k in keys)
    assert model(crops, 0).item() > 0


def test_dino_step_rejects_nonfinite_loss():
    student = _small_student()
    teacher = build_teacher(student)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    crops = [torch.full((2, 3, 8, 8), float('nan'))] * 2
    w0 = student.head.mlp[0].weight.detach().clone()
    with pytest.raises(FloatingPointError, match='diverged'):
        dino_step(student, teacher, DINOLoss(16, 2, 0.04, 0.04, 0, 1), crops, opt, epoch=0, momentum=0.9)
    assert torch.equal(student.head.mlp[0].weight, w0)


def test_cancel_gradients_last_layer():
    student = _small_student()
    student(torch.randn(2, 3, 8, 8)).sum().backward()
    cancel_gradients_last_layer(0, student, freeze_last_layer=1)
    for n, p in student.named_parameters():
        assert (p.grad is None) == ('last_layer' in n and p.requires_grad) or not p.requires_grad
    student.zero_grad()
    student(torch.randn(2, 3, 8, 8)).sum().backward()
    cancel_gradients_last_layer(1, student, freeze_last_layer=1)
    assert student.head.last_layer.parametrizations.weight.original1.grad is not None


# ---------------------------------------------------------------- schedules and optimiser helpers
def test_cosine_scheduler_endpoints():
    s = cosine_scheduler(0.5, 1e-6, epochs=10, niter_per_ep=20, warmup_epochs=2, start_warmup_value=0.01)
    assert len(s) == 200
    assert s[0] == 0.01                      # first value: start of warm-up
    assert s[39] == pytest.approx(0.5)       # end of warm-up: the base value
    assert s[40] == pytest.approx(0.5)       # the cosine starts at the base value
    assert s[-1] == pytest.approx(1e-6, abs=1e-4)   # and ends (one step short of) the final value
    assert np.all(np.diff(s[40:]) <= 0) and np.all(np.diff(s[:40]) > 0)
    m = cosine_scheduler(0.996, 1.0, 100, 10)
    assert m[0] == 0.996 and m[-1] == pytest.approx(1.0, abs=1e-6) and np.all(np.diff(m) >= 0)
    wd = cosine_scheduler(0.04, 0.4, 100, 10)
    assert wd[0] == pytest.approx(0.04) and wd[-1] == pytest.approx(0.4, abs=1e-4)
    # the reference's formula, written out
    it = np.arange(160)
    np.testing.assert_allclose(s[40:], 1e-6 + 0.5 * (0.5 - 1e-6) * (1 + np.cos(np.pi * it / 160)))


def test_params_groups_and_lr_wd():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2), DINOHead(2, 5, hidden_dim=4, bottleneck_dim=3))
    groups = get_params_groups(model)
    decay, no_decay = groups[0]['params'], groups[1]['params']
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay} == {'0.weight', '2.weight', '3.mlp.0.weight', '3.mlp.2.weight',
                                              '3.mlp.4.weight', '3.last_layer.parametrizations.weight.original1'}
    assert all(n.endswith('bias') or n.startswith('1.') for n in (names[id(p)] for p in no_decay))
    assert len(no_decay) == 7 and groups[1]['weight_decay'] == 0. and 'weight_decay' not in groups[0]
    # the frozen weight-norm g is in neither group
    assert '3.last_layer.parametrizations.weight.original0' not in {names[id(p)] for p in decay + no_decay}
    opt = torch.optim.AdamW(get_params_groups(model), lr=1.0, weight_decay=0.1)
    set_lr_wd(opt, 0.25, 0.4)
    assert [g['lr'] for g in opt.param_groups] == [0.25, 0.25]
    assert [g['weight_decay'] for g in opt.param_groups] == [0.4, 0.0]


def test_clip_gradients_per_parameter():
    model = nn.Linear(3, 2)
    model.weight.grad = torch.full_like(model.weight, 10.0)       # norm sqrt(6)*10 > clip
    model.bias.grad = torch.tensor([0.1, 0.0])                    # norm 0.1 < clip
    norms = clip_gradients(model, 1.0)
    torch.testing.assert_close(norms, torch.tensor([math.sqrt(6) * 10, 0.1]))
    assert model.weight.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(model.bias.grad, torch.tensor([0.1, 0.0]))


# ---------------------------------------------------------------- distributed centering, mixed precision
def test_center_all_reduce_divides_by_world_size(monkeypatch):
    "Two identical processes (simulated: all_reduce doubles the sum) give the single-process center."
    import torch.distributed as dist
    K, B = 16, 4
    gen = torch.Generator().manual_seed(5)
    s, t = _logits(4 * B, K, gen), _logits(2 * B, K, gen)
    single = DINOLoss(K, 4, 0.04, 0.04, 0, 1).double()
    single(s, t, 0)
    monkeypatch.setattr(dist, 'is_initialized', lambda: True)
    monkeypatch.setattr(dist, 'get_world_size', lambda: 2)
    calls = []
    def fake_all_reduce(x):
        calls.append(x.shape); x.mul_(2)
    monkeypatch.setattr(dist, 'all_reduce', fake_all_reduce)
    two = DINOLoss(K, 4, 0.04, 0.04, 0, 1).double()
    two(s, t, 0)
    assert calls == [(1, K)]
    torch.testing.assert_close(two.center, single.center, rtol=0, atol=1e-15)


def test_center_with_a_real_process_group():
    import torch.distributed as dist, socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0)); port = sock.getsockname()[1]
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
    try:
        loss = DINOLoss(8, 2, 0.04, 0.04, 0, 1)
        t = torch.randn(4, 8)
        loss(torch.randn(4, 8), t, 0)
        torch.testing.assert_close(loss.center, 0.1 * t.mean(0, keepdim=True))
    finally:
        dist.destroy_process_group()


def test_dino_step_bf16_autocast_on_cpu():
    student = _small_student()
    teacher = build_teacher(student)
    loss_fn = DINOLoss(16, 2, 0.04, 0.04, 0, 1)
    opt = torch.optim.SGD(get_params_groups(student), lr=0.1)
    crops = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    loss = dino_step(student, teacher, loss_fn, crops, opt, epoch=1, momentum=0.9, amp_dtype=torch.bfloat16)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)      # the loss itself runs in float32
    assert loss_fn.center.dtype == torch.float32


# ---------------------------------------------------------------- Sinkhorn-Knopp teacher (DINOv2)
def _cosine_logits(n, K, seed, dtype=torch.float32):
    "Teacher logits of the size a DINO head gives (cosines, here about 0.1 * N(0, 1))."
    return 0.1 * torch.randn(n, K, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _sinkhorn_loops(logits, T, n_iterations=3):
    "DINOv2's sinkhorn_knopp_teacher written with plain loops over a float64 numpy array."
    L = np.asarray(logits, dtype=np.float64) / T
    B, K = L.shape
    Q = np.exp(L - L.max()).T
    Q /= Q.sum()
    for _ in range(n_iterations):
        for k in range(K): Q[k, :] /= K * Q[k, :].sum()
        for b in range(B): Q[:, b] /= B * Q[:, b].sum()
    return torch.from_numpy((B * Q).T)


def _col_dev(P):
    "Largest |column sum - B/K|, relative to B/K."
    B, K = P.shape
    return ((P.double().sum(0) - B / K).abs().max() / (B / K)).item()


@pytest.mark.parametrize('B,K', [(64, 16), (16, 32), (32, 32)])
def test_sinkhorn_rows_are_distributions_and_columns_balance(B, K):
    t = _cosine_logits(B, K, seed=B + K)
    devs = {}
    for n in (1, 3, 10, 50):
        P = sinkhorn_knopp(t, 0.04, n)
        assert P.shape == (B, K) and P.dtype == torch.float32 and (P >= 0).all()
        torch.testing.assert_close(P.sum(1), torch.ones(B), rtol=0, atol=1e-6)   # the last step is the column step
        devs[n] = _col_dev(P)
    assert devs[1] > devs[3] > devs[10] > devs[50]
    # measured on these inputs: 0.25, 0.06, 0.11 after 3 iterations (up to 0.40 over 20 seeds and T = 0.07);
    # at most 2e-7 after 50 (float32 rounding; up to 2.5e-5 over those 40 inputs)
    assert devs[3] < 0.3, devs
    assert devs[50] < 1e-5, devs


@pytest.mark.parametrize('T,n', [(0.04, 3), (0.07, 3), (0.1, 10), (1.0, 1)])
def test_sinkhorn_matches_direct_implementation(T, n):
    t = _cosine_logits(24, 40, seed=7)
    torch.testing.assert_close(sinkhorn_knopp(t, T, n).double(), _sinkhorn_loops(t, T, n), rtol=0, atol=1e-6)
    # float64 stays float64 (and agrees to rounding); half precision is promoted to float32
    t64 = t.double()
    assert sinkhorn_knopp(t64, T, n).dtype == torch.float64
    torch.testing.assert_close(sinkhorn_knopp(t64, T, n), _sinkhorn_loops(t64, T, n), rtol=0, atol=1e-12)
    assert sinkhorn_knopp(t.bfloat16(), T, n).dtype == torch.float32
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = sinkhorn_knopp(t, T, n)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, sinkhorn_knopp(t, T, n), rtol=0, atol=0)


def test_sinkhorn_invariant_to_shifts():
    # float64, so that t + c is not rounded (in float32, t + 100 moves the logits by up to 4e-6)
    t = _cosine_logits(32, 16, seed=3, dtype=torch.float64)
    P = sinkhorn_knopp(t, 0.04)
    # a constant on all logits: removed by the global max (without it exp(100 / 0.04) overflows to inf)
    for c in (-30.0, 5.0, 100.0):
        torch.testing.assert_close(sinkhorn_knopp(t + c, 0.04), P, rtol=0, atol=1e-6)
    assert torch.isfinite(sinkhorn_knopp(t.float() + 100.0, 0.04)).all()
    # a constant per prototype is a common factor of a row of Q: the first row step removes it
    offsets = torch.linspace(-0.1, 0.1, 16, dtype=torch.float64)
    torch.testing.assert_close(sinkhorn_knopp(t + offsets, 0.04), P, rtol=0, atol=1e-6)
    # ... which the softmax does not: a collapsed teacher (one prototype on for all) is spread by SK
    collapsed = 0.03 * torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    collapsed[:, 0] += 0.5
    assert entropy(F.softmax(collapsed / 0.04, -1).mean(0)) < 0.01
    assert entropy(sinkhorn_knopp(collapsed, 0.04).mean(0)) > 0.999 * math.log(16)
    with pytest.raises(ValueError, match='n_iterations'):
        sinkhorn_knopp(t, 0.04, 0)


@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_loss_sinkhorn_matches_direct_computation(dtype, tol):
    K, B, nc, T, n_it = 32, 8, 6, 0.04, 3
    loss_fn = DINOLoss(K, nc, T, T, 0, 10, centering='sinkhorn_knopp', sk_iterations=n_it).to(dtype)
    gen = torch.Generator().manual_seed(11)
    s = torch.randn(nc * B, K, generator=gen, dtype=dtype)
    t = 0.1 * torch.randn(2 * B, K, generator=gen, dtype=dtype)
    loss = loss_fn(s, t, 0)
    pt = _sinkhorn_loops(t, T, n_it).chunk(2)                  # all 2B rows jointly, then one chunk per global crop
    ls = F.log_softmax(s.double() / 0.1, -1).chunk(nc)
    ces = [-(pt[i] * ls[j]).sum(-1).mean() for i in range(2) for j in range(nc) if i != j]
    assert abs(loss.item() - torch.stack(ces).mean().item()) < tol
    assert loss.dtype == dtype
    st = loss_fn.last_stats
    assert abs(float(st['teacher_entropy']) - torch.cat([entropy(p) for p in pt]).mean().item()) < tol
    assert abs(float(st['cross_entropy']) - loss.item()) < tol
    assert abs(float(st['cross_entropy']) - float(st['teacher_entropy']) - float(st['kl'])) < tol
    # SK on all global crops jointly differs from SK per crop (the batch DINOv2 balances is 2B rows)
    per_crop = torch.cat([_sinkhorn_loops(c, T, n_it) for c in t.chunk(2)])
    assert (per_crop - torch.cat(pt)).abs().max() > 1e-3


def test_loss_sinkhorn_leaves_center_and_gradients():
    K, B = 16, 4
    loss_fn = DINOLoss(K, 4, 0.04, 0.04, 0, 10, centering='sinkhorn_knopp')
    loss_fn.center.normal_()
    c0 = loss_fn.center.clone()
    s = torch.randn(4 * B, K, requires_grad=True)
    t = (0.1 * torch.randn(2 * B, K)).requires_grad_()
    a = loss_fn(s, t + 3.0, 0)                                  # the center is neither subtracted nor updated
    assert torch.equal(loss_fn.center, c0)
    loss_fn.update_center(t.detach())
    assert torch.equal(loss_fn.center, c0)
    loss_fn.center.zero_()
    b = loss_fn(s, t, 0)
    assert abs(a.item() - b.item()) < 1e-5
    b.backward()
    assert t.grad is None and s.grad is not None                # stop-gradient on the teacher


def test_loss_centering_option_validation_and_default():
    with pytest.raises(ValueError, match="centering='nope'"):
        DINOLoss(8, 4, 0.04, 0.04, 0, 10, centering='nope')
    with pytest.raises(ValueError, match='sk_iterations'):
        DINOLoss(8, 4, 0.04, 0.04, 0, 10, centering='sinkhorn_knopp', sk_iterations=0)
    # the default is DINO's centering, bit for bit; all nine positional arguments still work
    K, B, nc = 16, 4, 4
    default = DINOLoss(K, nc, 0.04, 0.07, 2, 5, 0.1, 0.9, True).double()
    explicit = DINOLoss(K, nc, 0.04, 0.07, 2, 5, 0.1, 0.9, True, centering='centering', sk_iterations=7).double()
    assert default.centering == 'centering' and default.sk_iterations == 3
    gen = torch.Generator().manual_seed(4)
    for epoch in range(4):
        s, t = _logits(nc * B, K, gen), _logits(2 * B, K, gen)
        assert torch.equal(default(s, t, epoch), explicit(s, t, epoch))
        assert torch.equal(default.center, explicit.center)
    assert default.center.abs().max() > 0


def test_loss_default_mode_still_matches_lightly():
    from lightly.loss import DINOLoss as LightlyDINOLoss
    K, B, nc = 32, 8, 4
    ours = DINOLoss(K, nc, 0.04, 0.07, 3, 10, centering='centering').double()
    ref = LightlyDINOLoss(K, 0.04, 0.07, 3, 0.1, 0.9).double()
    gen = torch.Generator().manual_seed(9)
    for epoch in (0, 2, 5):
        s, t = _logits(nc * B, K, gen), _logits(2 * B, K, gen)
        assert abs(ours(s, t, epoch).item() - ref(list(t.chunk(2)), list(s.chunk(nc)), epoch=epoch).item()) < 1e-6
        torch.testing.assert_close(ours.center, ref.center.reshape(1, K), rtol=0, atol=1e-6)


def test_sinkhorn_all_reduce_over_processes(monkeypatch):
    "Two identical processes (simulated) balance their union: the result is SK of the batch stacked twice."
    import torch.distributed as dist
    t = _cosine_logits(12, 20, seed=5, dtype=torch.float64)
    union = sinkhorn_knopp(torch.cat([t, t]), 0.04)[:12]
    calls = []
    def fake_all_reduce(x, op=dist.ReduceOp.SUM):
        calls.append((tuple(x.shape), op))
        if op == dist.ReduceOp.SUM: x.mul_(2)                  # the other process holds the same values
    monkeypatch.setattr(dist, 'is_initialized', lambda: True)
    monkeypatch.setattr(dist, 'get_world_size', lambda: 2)
    monkeypatch.setattr(dist, 'all_reduce', fake_all_reduce)
    two = sinkhorn_knopp(t, 0.04)
    torch.testing.assert_close(two, union, rtol=0, atol=1e-12)
    assert calls == [((), dist.ReduceOp.MAX), ((), dist.ReduceOp.SUM)] + [((20, 1), dist.ReduceOp.SUM)] * 3
    torch.testing.assert_close(two.sum(1), torch.ones(12, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(two.sum(0) * 2, union.sum(0) * 2, rtol=0, atol=1e-12)


def test_sinkhorn_with_a_real_process_group():
    import torch.distributed as dist, socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0)); port = sock.getsockname()[1]
    t = _cosine_logits(16, 8, seed=6)
    alone = sinkhorn_knopp(t, 0.04)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
    try:
        torch.testing.assert_close(sinkhorn_knopp(t, 0.04), alone, rtol=0, atol=0)
        loss = DINOLoss(8, 2, 0.04, 0.04, 0, 1, centering='sinkhorn_knopp')
        assert torch.isfinite(loss(torch.randn(16, 8), t, 0)) and torch.all(loss.center == 0)
    finally:
        dist.destroy_process_group()


# ---- KoLeo (DINOv2's feature-spreading regulariser)
from dino_course.dino import koleo_loss


@pytest.mark.parametrize('n,D', [(2, 3), (17, 8), (128, 64)])
def test_koleo_matches_direct_computation(n, D):
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    u = x / x.norm(dim=1, keepdim=True)
    nearest = [min(float((u[i] - u[j]).norm()) for j in range(n) if j != i) for i in range(n)]   # plain loops
    assert abs(float(koleo_loss(x)) - (-np.mean(np.log(nearest)))) < 1e-5


def test_koleo_gradient_pushes_nearest_neighbours_apart():
    x = torch.tensor([[1., 0.], [0.99, 0.14], [-1., 0.]], requires_grad=True)   # rows 0 and 1 are close
    koleo_loss(x).backward()
    step = -x.grad                                                                 # gradient descent direction
    a, b = F.normalize(x.detach(), dim=1)[:2]
    assert float(torch.dot(step[1], b - a)) > 0 and float(torch.dot(step[0], a - b)) > 0
    with torch.autocast('cpu', dtype=torch.bfloat16):                              # float32 inside autocast
        assert koleo_loss(torch.randn(8, 4)).dtype == torch.float32
    with pytest.raises(ValueError, match='n >= 2'): koleo_loss(torch.randn(1, 4))


def test_multicrop_wrapper_returns_features_on_request():
    w = MultiCropWrapper(nn.Linear(12, 5), DINOHead(5, 7, hidden_dim=8, bottleneck_dim=4))
    crops = [torch.randn(3, 12), torch.randn(3, 12)]
    out, feats = w(crops, return_features=True)
    assert out.shape == (6, 7) and feats.shape == (6, 5)
    assert torch.allclose(out, w(crops)) and torch.allclose(feats, w.backbone(torch.cat(crops)))


def test_dino_method_brings_the_collapse_warning():
    "DINOMethod's callback: a confirmed collapse is a RuntimeWarning and a note in the period's log entry."
    from types import SimpleNamespace
    from dino_course.dino import CollapseMonitor, CollapseWarning
    from dino_course.learner import DistEnv
    cb = CollapseWarning(CollapseMonitor(256, window=3))
    t = SimpleNamespace(step=0, acc={}, env=DistEnv())
    with pytest.warns(RuntimeWarning, match='collapse \\(uniform\\)'):
        for _ in range(3):
            t.step += 1; cb.after_step(t, 5.5, {'teacher_entropy': 5.5, 'kl': 0.001})
    assert 'uniform' in t.acc['collapse_warning']
