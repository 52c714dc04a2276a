import math
import numpy as np
import pytest
import torch
from dino_course.dino import DINOLoss
from dino_course.collapse import CollapseMonitor, step_stats


def direct_stats(student_out, teacher_out, center, ncrops, tau_s, tau_t):
    "h, KL, H written out with numpy in float64, pair by pair (teacher crop t never meets student crop t)."
    s, t, c = (x.double().numpy() for x in (student_out, teacher_out, center))
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    B = len(t) // 2
    log_pt = log_softmax((t - c) / tau_t).reshape(2, B, -1)
    log_ps = log_softmax(s / tau_s).reshape(ncrops, B, -1)
    pt = np.exp(log_pt)
    h = -(pt * log_pt).sum(-1).mean()
    pairs = [(i, j) for i in range(2) for j in range(ncrops) if i != j]
    kl = np.mean([(pt[i] * (log_pt[i] - log_ps[j])).sum(-1).mean() for i, j in pairs])
    H = np.mean([-(pt[i] * log_ps[j]).sum(-1).mean() for i, j in pairs])
    return h, kl, H


@pytest.mark.parametrize('seed,ncrops,tau_t,scale', [(0, 2, 0.04, 1.), (1, 4, 0.07, 3.), (2, 6, 0.1, 2.)])
def test_stats_match_direct_computation(seed, ncrops, tau_t, scale):
    g = torch.Generator().manual_seed(seed)
    K, B, tau_s = 128, 16, 0.1
    student_out = torch.randn(ncrops * B, K, generator=g) * scale
    teacher_out = torch.randn(2 * B, K, generator=g) * scale
    center = torch.randn(1, K, generator=g)
    loss_fn = DINOLoss(K, ncrops, tau_t, tau_t, 0, 10, student_temp=tau_s)
    loss_fn.center.copy_(center)
    loss = loss_fn(student_out, teacher_out, epoch=0)
    st = step_stats(loss_fn)
    h, kl, H = direct_stats(student_out, teacher_out, center, ncrops, tau_s, tau_t)
    assert st['teacher_entropy'] == pytest.approx(h, rel=1e-4, abs=1e-4)
    assert st['kl'] == pytest.approx(kl, rel=1e-4, abs=1e-4)
    assert st['cross_entropy'] == pytest.approx(H, rel=1e-4, abs=1e-4)
    assert loss.item() == pytest.approx(H, rel=1e-4, abs=1e-4)
    # eq. 9: H = h + KL. DINOLoss works in float32, so the gap is round-off: < 1e-5 at losses of order 10
    # (at losses in the hundreds it would be one float32 ulp, ~1e-5 itself)
    assert st['identity_gap'] < 1e-5
    assert abs(h + kl - H) < 1e-9                                          # the identity itself, in float64
    assert abs(st['cross_entropy'] - st['teacher_entropy'] - st['kl']) < 1e-5
    assert 0 <= st['teacher_entropy'] <= math.log(K) + 1e-5 and st['kl'] >= -1e-5


def test_step_stats_before_any_call():
    with pytest.raises(RuntimeError, match='not been called'):
        step_stats(DINOLoss(8, 2, 0.04, 0.04, 0, 1))


def _stats(kind, K=256, B=32, seed=0):
    "(h(P_t), KL(P_t||P_s)) of synthetic teacher/student probabilities."
    g = torch.Generator().manual_seed(seed)
    if kind == 'uniform':
        pt = torch.full((B, K), 1 / K); ps = pt
    elif kind == 'constant':                                                # one in-between distribution for all
        pt = (torch.randn(1, K, generator=torch.Generator().manual_seed(0)) * 2).softmax(-1).expand(B, K); ps = pt
    elif kind == 'onehot':
        pt = torch.zeros(B, K); pt[:, 7] = 1; ps = (pt * 30).softmax(-1)      # student nearly one-hot too
    else:                                                                   # healthy: image-dependent, partly matched
        logits = torch.randn(B, K, generator=g) * 3
        pt = logits.softmax(-1); ps = (logits + torch.randn(B, K, generator=g)).softmax(-1)
    h = -torch.special.xlogy(pt, pt).sum(-1).mean()
    kl = (torch.special.xlogy(pt, pt) - pt * ps.clamp_min(1e-30).log()).sum(-1).mean()
    return h.item(), kl.item()


def _run(kinds, window=20, K=256):
    mon, msgs = CollapseMonitor(K, window=window), []
    for step, kind in enumerate(kinds):
        m = mon.update(step, *_stats(kind, K=K, seed=step))
        if m: msgs.append((step, m))
    return mon, msgs


@pytest.mark.parametrize('kind,status', [('uniform', 'uniform'), ('onehot', 'dominant dimension'),
                                         ('constant', 'constant output')])
def test_monitor_flags_collapse_with_start_step(kind, status):
    mon, msgs = _run(['healthy'] * 25 + [kind] * 40)
    assert mon.status == status and mon.collapsed
    assert mon.since_step == 25
    assert len(msgs) == 1 and msgs[0][0] == 25 + 20 - 1          # reported once, when the window fills
    assert status in msgs[0][1] and 'step 25' in msgs[0][1]


def test_monitor_quiet_on_healthy_and_short_dips():
    mon, msgs = _run(['healthy'] * 200)
    assert mon.status == 'ok' and mon.since_step is None and not msgs
    mon, msgs = _run((['healthy'] * 10 + ['uniform'] * 19) * 4)      # dips shorter than the window
    assert mon.status == 'ok' and not msgs


def test_monitor_recovers_and_reports_again():
    mon, msgs = _run(['uniform'] * 30 + ['healthy'] * 5 + ['onehot'] * 30)
    assert [m[0] for m in msgs] == [19, 35 + 19]
    assert mon.status == 'dominant dimension' and mon.since_step == 35


def test_monitor_accepts_tensors_and_stats_dicts():
    mon = CollapseMonitor(64, window=3)
    for step in range(3):
        out = mon.update_stats(step, dict(teacher_entropy=torch.tensor(math.log(64)), kl=torch.tensor(1e-4)))
    assert mon.status == 'uniform' and out is not None and mon.since_step == 0


def test_monitor_bad_arguments():
    with pytest.raises(ValueError, match='out_dim'): CollapseMonitor(1)
    with pytest.raises(ValueError, match='dominant_frac'): CollapseMonitor(64, dominant_frac=0.95, uniform_frac=0.9)
    with pytest.raises(ValueError, match='window'): CollapseMonitor(64, window=0)


def test_run_seeds_reuses_done_runs_and_tabulates():
    from dino_course.collapse import CollapseConfig, run_ablation, run_seeds, seed_table
    cfg = CollapseConfig(steps=3, n_images=64, batch_size=16, out_dim=16, knn_k=5, seed=0)
    done = {'full DINO': run_ablation('full DINO', cfg, monitor=False)}
    by_seed = run_seeds(['full DINO'], [0, 1], cfg, done=done)
    assert by_seed['full DINO'][0] is done['full DINO'] and len(by_seed['full DINO']) == 2
    assert by_seed['full DINO'][1]['teacher_entropy'] != done['full DINO']['teacher_entropy']   # seed 1 really ran
    table = seed_table(by_seed)
    assert '| full DINO |' in table and '(2 seeds)' in table and table.count('\n') == 2


def test_knn_ablations_runs_each_switch_through_the_trainer(tmp_path, monkeypatch):
    "knn_ablations: one Trainer run per named ablation (+ supervised), kNN curve per epoch, the center really off, JSON written."
    import json
    import dino_course.bench                      # registers 'supervised'
    import dino_course.train as T
    from dino_course.collapse import knn_ablations
    made = []
    real = T.make_trainer
    def spy(*a, **k):
        t = real(*a, **k); made.append(t); return t
    monkeypatch.setattr(T, 'make_trainer', spy)
    r = knn_ablations(['full DINO (Sinkhorn-Knopp)', 'no centering'], epochs=1, steps_per_epoch=3, batch_size=16,
                      knn_train=100, knn_test=50, threads=1, verbose=False, path=str(tmp_path / 'r.json'))
    assert list(r['runs']) == ['full DINO (Sinkhorn-Knopp)', 'no centering', 'supervised']
    for x in r['runs'].values(): assert len(x['knn_curve']) == 2 and x['images_seen'] == 48
    sk, nc, sup = made
    assert sk.method.dino_loss.centering == 'sinkhorn_knopp' and sk.method.dino_loss.use_centering
    assert nc.method.dino_loss.centering == 'centering' and not nc.method.dino_loss.use_centering
    assert float(nc.method.dino_loss.center.abs().max()) == 0.           # the center never moved
    assert json.loads((tmp_path / 'r.json').read_text()) == json.loads(json.dumps(r))
    with pytest.raises(ValueError, match='no centering'): knn_ablations(['nope'])
