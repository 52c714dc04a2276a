"Tests of dino_course.ssl: NT-Xent, SimCLR, MoCo v2 (InfoNCE, queue, momentum encoder) and VICReg, on the learner and the CLI."
import json, math, os, subprocess
from types import SimpleNamespace
import pytest
import torch
import torch.nn.functional as F
from dino_course.ssl import (nt_xent, info_nce, KeyQueue, MoCoMethod, VICRegMethod, vicreg_terms, vicreg_loss, ema_update,
                             momentum_encoder, momentum_at)
from dino_course.vit import VisionTransformer
from dino_course.train import train, load_checkpoint, CHECKPOINT, ConfigError, validate_config, TrainConfig
from test_train import tiny, assert_same


def test_nt_xent_matches_lightly():
    "SimCLR's NT-Xent equals lightly's NTXentLoss (no memory bank) on random projections."
    lightly_loss = pytest.importorskip('lightly.loss')
    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 8), torch.randn(16, 8)
    ref = lightly_loss.NTXentLoss(temperature=0.2)(z1, z2)
    torch.testing.assert_close(nt_xent(z1, z2, 0.2), ref, atol=1e-6, rtol=1e-6)


def test_simclr_method_trains(tmp_path):
    "`--method simclr` runs through the same trainer (checkpoint, kNN, metrics)."
    m = train(tiny(tmp_path, method='simclr', n_local=0), verbose=False)
    assert m['method'] == 'simclr' and m['steps'] == 6 and m['knn_top1'] is not None
    assert set(load_checkpoint(tmp_path / 'run' / CHECKPOINT)) >= {'student', 'optimizer'}


def test_info_nce_matches_lightly_memory_bank_and_the_equation():
    "MoCo's InfoNCE with a queue equals lightly's NTXentLoss with a memory bank holding the same keys, and the equation."
    lightly_loss = pytest.importorskip('lightly.loss')
    torch.manual_seed(0)
    q, k, queue = torch.randn(8, 16), torch.randn(8, 16), F.normalize(torch.randn(32, 16), dim=1)
    ref = lightly_loss.NTXentLoss(temperature=0.2, memory_bank_size=(32, 16))
    ref.memory_bank.bank = queue.clone()
    torch.testing.assert_close(info_nce(q, k, queue, 0.2), ref(q, k), atol=1e-6, rtol=1e-6)
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    direct = torch.stack([-(qn[i] @ kn[i] / 0.2 - torch.logsumexp(torch.cat([(qn[i] @ kn[i])[None], queue @ qn[i]]) / 0.2, 0))
                          for i in range(8)]).mean()
    torch.testing.assert_close(info_nce(q, k, queue, 0.2), direct, atol=1e-6, rtol=1e-6)


def test_key_queue_enqueue_dequeue_wraps():
    "The queue writes each batch over the oldest keys (l2-normalised), wrapping around; the pointer follows."
    queue = KeyQueue(size=6, dim=3)
    batches = [torch.randn(4, 3) for _ in range(3)]                        # 12 keys through 6 places
    queue.enqueue(batches[0]); assert queue.ptr.item() == 4
    queue.enqueue(batches[1]); assert queue.ptr.item() == 2
    queue.enqueue(batches[2]); assert queue.ptr.item() == 0
    keys = F.normalize(torch.cat(batches), dim=1)
    # places 0..5 hold keys 6..11: [b1[2], b1[3], b2[0..3]]
    torch.testing.assert_close(queue.keys, torch.cat([keys[6:8], keys[8:12]]))
    torch.testing.assert_close(queue.keys.norm(dim=1), torch.ones(6))
    big = KeyQueue(size=2, dim=3); big.enqueue(torch.randn(5, 3))            # a batch larger than the queue: its first keys
    assert big.ptr.item() == 0


def _moco(**kw):
    cfg = SimpleNamespace(hidden_dim=16, bottleneck_dim=8, queue_size=64, moco_temperature=0.2, moco_momentum=0.9,
                          moco_momentum_end=0.99, **kw)
    torch.manual_seed(0)
    return MoCoMethod(cfg, VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2), epochs=2, niter_per_ep=5)


def test_moco_step_momentum_update_and_enqueue():
    """One step: the loss is the symmetrised InfoNCE of queries against the other view's keys with the queue as
    negatives; after the optimiser step the key encoder moves to m * key + (1 - m) * query (m from its cosine
    schedule) and both views' keys are enqueued."""
    moco = _moco()
    x1, x2 = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    queue0 = moco.queue.keys.clone()
    loss, stats = moco.training_step([x1, x2], 3)
    with torch.no_grad():
        q1, q2 = moco.student([x1, x2]).chunk(2); k1, k2 = moco.keys(torch.cat([x1, x2]), 3).chunk(2)
    torch.testing.assert_close(loss, (info_nce(q1, k2, queue0, 0.2) + info_nce(q2, k1, queue0, 0.2)) / 2, atol=1e-6, rtol=1e-6)
    opt = torch.optim.SGD(moco.student.parameters(), lr=0.5)
    opt.zero_grad(); loss.backward()
    assert all(p.grad is None for p in moco.key_encoder.parameters())          # keys: no gradient
    opt.step()
    before = [p.clone() for p in moco.key_encoder.parameters()]
    moco.after_step(3)
    m = momentum_at(3, 10, 0.9, 0.99)
    assert 0.9 < m < 0.99 and moco.momentum(3) == m
    for b, k, q in zip(before, moco.key_encoder.parameters(), moco.student.parameters()):
        torch.testing.assert_close(k, m * b + (1 - m) * q, atol=1e-6, rtol=1e-6)
    assert moco.queue.ptr.item() == 16
    torch.testing.assert_close(moco.queue.keys[:16], F.normalize(torch.cat([k1, k2]), dim=1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(moco.queue.keys[16:], queue0[16:])


def test_moco_keys_are_computed_in_shuffled_groups():
    "Shuffling BN: keys from random groups, returned in the batch's order; the same step gives the same groups (resume)."
    moco = _moco()
    x = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        grouped, again = moco.keys(x, 5), moco.keys(x, 5)
        torch.testing.assert_close(grouped, again)
        perm = torch.randperm(16, generator=torch.Generator().manual_seed(5))
        halves = torch.cat([moco.key_encoder(c) for c in x[perm].chunk(2)])
        torch.testing.assert_close(grouped[perm], halves)
        assert not torch.allclose(grouped, moco.key_encoder(x), atol=1e-4)        # whole-batch BatchNorm gives other keys
        moco.shuffle_groups = 1
        torch.testing.assert_close(moco.keys(x, 5), moco.key_encoder(x))


def test_momentum_schedule_and_ema():
    assert momentum_at(0, 100, 0.99) == 0.99 and momentum_at(100, 100, 0.99) == 1.0 and momentum_at(500, 100, 0.99) == 1.0
    assert abs(momentum_at(50, 100, 0.9, 0.99) - 0.945) < 1e-12
    a = torch.nn.Linear(2, 2); b = momentum_encoder(a)
    with pytest.raises(ValueError, match='momentum_encoder'): ema_update(a, torch.nn.Sequential(), 0.5)
    ema_update(a, b, 0.0)                                                 # m = 0 copies the online weights
    torch.testing.assert_close(b.weight, a.weight)


def test_vicreg_matches_lightly_and_the_direct_terms():
    "VICReg's loss equals lightly's VICRegLoss (25/25/1) to 1e-6, and each term a direct computation."
    lightly_loss = pytest.importorskip('lightly.loss')
    from lightly.loss.vicreg_loss import invariance_loss, variance_loss, covariance_loss
    torch.manual_seed(0)
    z1, z2 = torch.randn(32, 12) * 2, torch.randn(32, 12)
    torch.testing.assert_close(vicreg_loss(z1, z2), lightly_loss.VICRegLoss()(z1, z2), atol=1e-6, rtol=1e-6)
    inv, var, cov = vicreg_terms(z1, z2)
    torch.testing.assert_close(inv, invariance_loss(z1, z2), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(var, (variance_loss(z1) + variance_loss(z2)) / 2, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(cov, covariance_loss(z1) + covariance_loss(z2), atol=1e-6, rtol=1e-6)
    # direct: loops over samples and dimensions
    B, D = z1.shape
    inv_d = sum(((z1[b] - z2[b]) ** 2).sum() for b in range(B)) / (B * D)
    def var_d(z): return sum(max(0., 1 - math.sqrt(((z[:, j] - z[:, j].mean()) ** 2).sum().item() / (B - 1) + 1e-4)) for j in range(D)) / D
    def cov_d(z):
        zc = z - z.mean(0)
        return sum((zc[:, i] @ zc[:, j] / (B - 1)) ** 2 for i in range(D) for j in range(D) if i != j) / D
    torch.testing.assert_close(inv, inv_d, atol=1e-6, rtol=1e-6)
    assert abs(var.item() - (var_d(z1) + var_d(z2)) / 2) < 1e-6
    torch.testing.assert_close(cov, cov_d(z1) + cov_d(z2), atol=1e-5, rtol=1e-6)
    with pytest.raises(AssertionError): torch.testing.assert_close(vicreg_loss(z1, z2, cov_coeff=2.), vicreg_loss(z1, z2))


def test_vicreg_method_logs_its_terms():
    cfg = SimpleNamespace(hidden_dim=16, vicreg_dim=24, vicreg_sim_coeff=25., vicreg_std_coeff=25., vicreg_cov_coeff=1.)
    torch.manual_seed(0)
    m = VICRegMethod(cfg, VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2), 1, 1)
    loss, stats = m.training_step([torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)], 0)
    torch.testing.assert_close(loss, 25 * stats['invariance'] + 25 * stats['variance'] + stats['covariance'], atol=1e-5, rtol=1e-6)
    assert m.student.head[-1].out_features == 24


@pytest.mark.parametrize('method, parts', [('moco', ('student', 'key_encoder', 'queue')), ('vicreg', ('student',))])
def test_resume_restores_queue_and_key_encoder(tmp_path, method, parts):
    "A run stopped at step 2 and resumed ends with the bits of an uninterrupted one: student, key encoder and queue."
    kw = dict(method=method, n_local=0, queue_size=40, vicreg_dim=16)
    train(tiny(tmp_path, 'full', **kw), verbose=False)
    train(tiny(tmp_path, 'cut', stop_at_step=2, **kw), verbose=False)
    ck = load_checkpoint(tmp_path / 'cut' / CHECKPOINT)
    assert set(parts) <= set(ck)
    if method == 'moco': assert ck['queue']['ptr'].item() == 2 * 2 * 8 % 40            # 2 steps x 2 views x batch 8
    m = train(tiny(tmp_path, 'cut', **kw), verbose=False)
    assert m['steps'] == 6 and m['stopped'] == 'finished'
    full, cut = (load_checkpoint(tmp_path / d / CHECKPOINT) for d in ('full', 'cut'))
    assert_same({f'{p}.{k}': v for p in parts for k, v in full[p].items()}, {f'{p}.{k}': v for p in parts for k, v in cut[p].items()})


def test_bad_options_are_one_line_config_errors():
    for kw, flag in [(dict(method='moco', queue_size=0), '--queue-size'), (dict(method='moco', moco_momentum=1.5), '--moco-momentum'),
                     (dict(method='moco', moco_temperature=0), '--moco-temperature'), (dict(method='vicreg', vicreg_std_coeff=-1), '--vicreg-std-coeff')]:
        with pytest.raises(ConfigError, match=flag): validate_config(TrainConfig(**kw))


TINY_FLAGS = ['--batch-size', '8', '--steps-per-epoch', '3', '--image-size', '16', '--global-size', '16', '--backbone-kwargs',
              '{"depth": 1, "embed_dim": 16, "num_heads": 2}', '--hidden-dim', '16', '--bottleneck-dim', '8', '--knn-train', '60',
              '--knn-test', '40', '--threads', '1', '--no-figures']

@pytest.mark.parametrize('method', ['simclr', 'moco', 'vicreg'])
def test_cli_trains_each_method(tmp_path, method):
    "`dino-course train --method X --data shapes --stop-at-step 2`: exits 0, stops at step 2 with a kNN; `--method X --help` shows X's flags."
    out = tmp_path / method
    r = subprocess.run(['dino-course', 'train', '--method', method, '--data', 'shapes', '--stop-at-step', '2', *TINY_FLAGS,
                        '--queue-size', '32', '--vicreg-dim', '16', '--out', str(out)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, 'DINO_COURSE_QUIET': '1'})
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / 'metrics.json').read_text())
    assert m['config']['method'] == method and m['steps'] == 2 and m['knn_top1'] is not None
    h = subprocess.run(['dino-course', 'train', '--method', method, '--help'], capture_output=True, text=True, timeout=120).stdout
    own = {'simclr': '--bottleneck-dim', 'moco': '--queue-size', 'vicreg': '--vicreg-sim-coeff'}[method]
    assert own in h and '--teacher-temp' not in h and '--byol-tau' not in h


def test_moco_under_two_processes_enqueues_the_global_batch(tmp_path):
    """Under `torchrun` (two gloo processes here) each process enqueues the keys of the whole global batch, so the
    queue advances by 2 views x the global batch per step; rank 0's checkpoint holds it."""
    from test_train import _ddp_worker, _free_port, TINY
    cfg = tiny(tmp_path, 'two', method='moco', n_local=0, queue_size=200, epochs=1, steps_per_epoch=3, device='cpu', amp='none')
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), cfg), nprocs=2, join=True)
    ck = load_checkpoint(tmp_path / 'two' / CHECKPOINT)
    assert ck['queue']['ptr'].item() == 3 * 2 * TINY['batch_size']
    m = json.loads((tmp_path / 'two' / 'metrics.json').read_text())
    assert m['world_size'] == 2


def test_short_run_logs_every_step_and_the_knn():
    "`short_run`: one entry per step (loss and the method's statistics) after step 0, kNN at 0, every `every` and at the end."
    from dino_course.ssl import short_run, SimCLRMethod
    torch.manual_seed(0)
    m = MoCoMethod(SimpleNamespace(hidden_dim=16, bottleneck_dim=8, queue_size=32, moco_temperature=0.2, moco_momentum=0.9,
                                   moco_momentum_end=0.99), VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2), 1, 3)
    calls = []
    log = short_run(m, 3, batch_size=8, evaluate=lambda b: calls.append(b) or 50., every=2)
    assert [e['step'] for e in log] == [0, 1, 2, 3] and all('positive_cos' in e and math.isfinite(e['loss']) for e in log[1:])
    assert [e['step'] for e in log if 'knn' in e] == [0, 2, 3] and all(b is m.eval_backbone() for b in calls)
    assert m.queue.ptr.item() == 3 * 16 % 32
