"Tests of dino_course.train (the main job on the learner): resume, DDP, divergence guard, atomic checkpoints, mismatched checkpoints, learning."
import json, os, socket, subprocess, sys
from dataclasses import replace
from pathlib import Path
import pytest
import torch
from dino_course.train import (TrainConfig, train, make_trainer, load_checkpoint, atomic_save, validate_config, ConfigError,
                               ResumeError, NonFiniteLossError, CHECKPOINT, step_seed)
from dino_course.learner import Trainer
from dino_course.dino import DINOMethod, koleo_loss
from dino_course.evaluate import KNNEvaluator
import dino_course.train as T

TINY = dict(batch_size=8, steps_per_epoch=3, epochs=2, image_size=16, global_size=16, local_size=8, n_local=2, patch_size=4,
            backbone_kwargs={'depth': 1, 'embed_dim': 16, 'num_heads': 2}, out_dim=32, hidden_dim=16, bottleneck_dim=8,
            knn_train=60, knn_test=40, figures=False, threads=1, warmup_epochs=0.5)

def tiny(tmp_path, name='run', **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, 'out': str(tmp_path / name), **kw})

def weights(run_dir) -> dict:
    ck = load_checkpoint(Path(run_dir) / CHECKPOINT)
    return {f'{part}.{k}': v for part in ('student', 'teacher', 'dino_loss') for k, v in ck[part].items()}

def assert_same(a: dict, b: dict, atol=0.):
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0: assert torch.equal(a[k], b[k]), k
        else: torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)

def test_resume_is_bit_exact(tmp_path):
    "An interrupted run (mid-epoch, then at an epoch boundary) resumed by re-running ends with the same bits."
    full = train(tiny(tmp_path, 'full'), verbose=False)
    assert full['stopped'] == 'finished' and full['steps'] == 6
    m = train(tiny(tmp_path, 'cut', stop_at_step=2), verbose=False)          # stops inside epoch 1
    assert m['stopped'] == 'step limit' and m['steps'] == 2
    ck = load_checkpoint(tmp_path / 'cut' / CHECKPOINT)
    assert (ck['epoch'], ck['it'], ck['step']) == (0, 2, 2)
    train(tiny(tmp_path, 'cut', stop_at_step=3), verbose=False)              # resumes, stops at the epoch boundary
    m = train(tiny(tmp_path, 'cut'), verbose=False)                          # the same command again: resumes to the end
    assert m['stopped'] == 'finished' and m['steps'] == 6
    assert_same(weights(tmp_path / 'full'), weights(tmp_path / 'cut'))
    ck_full, ck_cut = (load_checkpoint(tmp_path / d / CHECKPOINT) for d in ('full', 'cut'))
    for a, b in zip(ck_full['optimizer']['state'].values(), ck_cut['optimizer']['state'].values()):
        assert torch.equal(a['exp_avg'], b['exp_avg'])
    # the epoch log of the resumed run equals the uninterrupted one (partial entries aside)
    strip = lambda h: [{k: v for k, v in e.items() if k not in ('seconds', 'images_per_second')} for e in h if not e.get('partial')]
    assert strip(ck_full['history']) == strip(ck_cut['history'])
    log = [json.loads(l) for l in (tmp_path / 'cut' / 'log.jsonl').read_text().splitlines()]
    assert log == json.loads(json.dumps(ck_cut['history']))
    assert set(json.loads((tmp_path / 'cut' / 'metrics.json').read_text())) >= {'knn_top1', 'epochs', 'images_seen', 'seconds'}

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _ddp_worker(rank: int, world: int, port: int, cfg: TrainConfig):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME=os.environ.get('GLOO_SOCKET_IFNAME', 'lo'))
    train(cfg, verbose=False)

def test_ddp_two_processes_equal_one(tmp_path):
    """Two gloo processes on slices of the same global batch end with the weights of one process on the whole batch
    (the Sinkhorn-Knopp teacher balances over the global batch). A network without BatchNorm: on a CPU each process
    normalises its own slice (the trainer switches to SyncBatchNorm on CUDA only, as the reference)."""
    # KoLeo off: as in DINOv2, each process looks for nearest neighbours within its own slice; float32: bf16 rounds
    # differently when the batch is split
    cfg = dict(epochs=1, steps_per_epoch=3, threads=1, device='cpu', arch='vit_tiny', use_bn=False, koleo_weight=0, amp='none')
    train(tiny(tmp_path, 'one', **cfg), verbose=False)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), tiny(tmp_path, 'two', **cfg)), nprocs=2, join=True)
    assert_same(weights(tmp_path / 'one'), weights(tmp_path / 'two'), atol=1e-5)
    m = json.loads((tmp_path / 'two' / 'metrics.json').read_text())
    assert m['world_size'] == 2 and m['images_seen'] == 3 * TINY['batch_size']

def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    "A NaN loss (injected at step 4, in epoch 2) stops training with a clear message; the epoch-1 checkpoint stays."
    loss = DINOMethod.training_step
    def nan_at_4(self, views, step):
        l, s = loss(self, views, step)
        return (l * float('nan') if step >= 4 else l), s
    monkeypatch.setattr(DINOMethod, 'training_step', nan_at_4)
    with pytest.raises(NonFiniteLossError) as e: train(tiny(tmp_path), verbose=False)
    msg = str(e.value)
    assert 'diverged' in msg and 'nan' in msg and 'last good checkpoint' in msg and '(epoch 1, step 3)' in msg and '--lr' in msg
    ck = load_checkpoint(tmp_path / 'run' / CHECKPOINT)
    assert (ck['epoch'], ck['step']) == (1, 3)
    assert all(v.isfinite().all() for v in ck['student'].values())

def test_failed_save_keeps_old_checkpoint(tmp_path, monkeypatch):
    "A save that dies half-way (disk full) leaves the previous checkpoint intact and loadable, and no temp files."
    train(tiny(tmp_path, epochs=1), verbose=False)
    path = tmp_path / 'run' / CHECKPOINT
    before = path.read_bytes()
    real_save = torch.save
    def dying_save(obj, f, *a, **k):
        if isinstance(obj, dict) and 'optimizer' in obj: f.write(b'PK\x03\x04 half a zip'); raise OSError(28, 'No space left on device')
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, 'save', dying_save)
    with pytest.raises(OSError, match='No space left'): train(tiny(tmp_path, epochs=2), verbose=False)
    assert path.read_bytes() == before
    assert load_checkpoint(path)['epoch'] == 1
    assert not list((tmp_path / 'run').glob('.*.tmp'))

def test_mismatched_and_corrupt_checkpoints(tmp_path):
    train(tiny(tmp_path, epochs=1), verbose=False)
    with pytest.raises(ResumeError) as e: train(tiny(tmp_path, epochs=1, out_dim=64, n_local=3), verbose=False)
    msg = str(e.value)
    assert 'out_dim: 32 -> 64' in msg and 'n_local: 2 -> 3' in msg and '--no-resume' in msg and '--out' in msg
    assert len(msg.splitlines()) == 1
    # architecture hidden from the config (a hand-edited file): the state dict tells
    ck = torch.load(tmp_path / 'run' / CHECKPOINT, weights_only=True); ck['student'] = {'x': torch.zeros(1)}
    torch.save(ck, tmp_path / 'run' / CHECKPOINT)
    with pytest.raises(ResumeError, match="saved 'student' does not fit"): train(tiny(tmp_path, epochs=1), verbose=False)
    # a truncated file: a clear message, the file left as it is
    path = tmp_path / 'run' / CHECKPOINT
    path.write_bytes(path.read_bytes()[:1000])
    before = path.read_bytes()
    with pytest.raises(ResumeError, match='cannot be read'): train(tiny(tmp_path, epochs=1), verbose=False)
    assert path.read_bytes() == before
    # --no-resume starts over and keeps the old file under another name
    m = train(tiny(tmp_path, epochs=1, resume=False), verbose=False)
    assert m['stopped'] == 'finished'
    kept = list((tmp_path / 'run').glob('checkpoint-*.pth'))
    assert len(kept) == 1 and kept[0].read_bytes() == before

def test_config_validation():
    for bad, flag in [(dict(arch='resnet_19'), '--arch'), (dict(lr=-1.), '--lr'), (dict(batch_size=0), '--batch-size'),
                      (dict(global_scale=(0.5, 0.1)), '--global-scale'), (dict(data='/no/such/folder'), '--data'),
                      (dict(momentum_teacher=1.5), '--momentum-teacher'), (dict(minutes=0.), '--minutes'),
                      (dict(aug='fancy'), '--aug'), (dict(device='gpu7'), '--device'), (dict(koleo_weight=-0.1), '--koleo-weight')]:
        with pytest.raises(ConfigError, match=flag): validate_config(TrainConfig(**bad))
    with pytest.raises(ConfigError, match='augmentation'): train(TrainConfig(**{**TINY, 'aug_kwargs': {'p_wobble': 1}}), verbose=False)

def test_step_seeds_are_distinct_and_stable():
    assert step_seed(0, 1, 1) == step_seed(0, 1, 1)
    assert len({step_seed(s, t, k) for s in range(3) for t in range(50) for k in range(1, 5)}) == 600

def test_time_budget_fixes_epochs_and_stops(tmp_path):
    "--minutes without --epochs: the number of epochs is measured once, saved with the config, and kept on resume."
    m = train(tiny(tmp_path, epochs=None, minutes=0.2, steps_per_epoch=2), verbose=False)
    assert m['stopped'] in ('finished', 'time budget') and m['steps'] >= 1
    saved = json.loads((tmp_path / 'run' / 'config.json').read_text())
    assert isinstance(saved['epochs'], int) and saved['epochs'] == m['epochs_planned'] >= 1
    assert load_checkpoint(tmp_path / 'run' / CHECKPOINT)['config']['epochs'] == saved['epochs']

def _mean_colour_bank(n: int, seed: int):
    "Built-in shapes labelled by the dominant channel of their mean colour (3 classes): what two views of an image share."
    from dino_course.data import make_shapes
    x = torch.from_numpy(make_shapes(n, 32, seed=seed)[0]).permute(0, 3, 1, 2)
    return x, x.float().mean((2, 3)).argmax(1)

def test_short_run_learns_without_collapsing(tmp_path):
    """A short CPU run (~30 s): with colour augmentation off the views share the image's colours; the DINO loss falls,
    and the teacher's kNN on colour classes stays far above chance (a collapsed teacher would be at chance).
    (Shape classes do not rise within a minute on this data: see the recipe notes in the issue.)"""
    cfg = TrainConfig(out=str(tmp_path / 'run'), threads=1, figures=False, image_size=32, global_size=32, local_size=16, n_local=4,
                      backbone_kwargs={'depth': 2, 'embed_dim': 64, 'num_heads': 4}, batch_size=32, steps_per_epoch=10, epochs=5,
                      out_dim=256, hidden_dim=256, bottleneck_dim=64, lr=1e-3, scale_lr=False, warmup_epochs=1, momentum_teacher=0.99,
                      aug_kwargs={'p_jitter': 0.0, 'p_gray': 0.0, 'blur': (0., 0., 0.), 'p_solarize': 0.0})
    m = make_trainer(cfg, evaluator=KNNEvaluator(_mean_colour_bank(1000, 1), _mean_colour_bank(500, 2)), verbose=False).fit()
    h = [e for e in load_checkpoint(tmp_path / 'run' / CHECKPOINT)['history'] if e.get('loss') is not None]
    assert len(h) == 5 and h[-1]['loss'] < h[0]['loss'] - 0.2, [e['loss'] for e in h]
    assert h[-1]['kl'] > 0.05                                       # the student still has something to learn from the teacher
    assert m['knn_top1'] > 60, m['knn_top1']                        # chance: 33%

def test_minutes_is_wall_clock_whatever_the_speed(tmp_path, monkeypatch):
    """--minutes without --epochs: the run stops within one step of the budget even when the steps speed up after the
    epochs were planned (the planner measured slow steps), and the schedules reach their end at the budget."""
    import time
    real_step, t0 = Trainer.train_step, time.time()
    def step(self, views, step_):
        time.sleep(0.25 if time.time() - t0 < 6 else 0.02)          # slow while the epochs are planned, then fast
        return real_step(self, views, step_)
    monkeypatch.setattr(Trainer, 'train_step', step)
    budget = 15.
    m = train(tiny(tmp_path, epochs=None, minutes=budget / 60, steps_per_epoch=4), verbose=False)
    assert m['stopped'] == 'finished'
    assert m['steps'] > m['epochs_planned'] * 4                     # more steps than planned: it did not stop early
    ck = load_checkpoint(tmp_path / 'run' / CHECKPOINT)
    assert ck['time_budget'] and ck['progress'] == pytest.approx(1., abs=0.05)
    # stopped at the budget (less the final evaluation's reserve), not later than one step plus that evaluation
    assert budget - 4 < m['seconds'] < budget + 2, m['seconds']
    lrs = [e['lr'] for e in ck['history'] if 'lr' in e]
    assert lrs[-1] < 0.2 * max(lrs)                                 # the cosine schedule got to its end
    again = train(tiny(tmp_path, epochs=None, minutes=budget / 60, steps_per_epoch=4), verbose=False)   # re-run: nothing left
    assert again['steps'] == m['steps']

def test_dino_learns_shape_classes_in_a_short_run(tmp_path):
    """The default recipe (vit_conv, Sinkhorn-Knopp teacher, KoLeo 0.3, two views, no blur) lifts the teacher's kNN on
    the ten shape classes (colours, textures, sizes and positions random) well above its initialisation within the
    first 200 steps of 128 images of a 1,000-step schedule: measured 14.2% -> 33.8% on the 5,000 / 2,000 bank (2,000
    test images: a standard error of about 1 point) in 39 s on 2 CPU cores with bf16, and the loss falls."""
    cfg = TrainConfig(out=str(tmp_path / 'sk'), epochs=10, steps_per_epoch=100, stop_at_step=200, batch_size=128,
                      eval_every=0, figures=False, threads=2)             # the ladder's kNN bank: 5,000 / 2,000 shapes
    m = train(cfg, verbose=False)
    assert m['knn_top1'] > m['knn_top1_init'] + 10, (m['knn_top1_init'], m['knn_top1'])
    h = [e for e in load_checkpoint(tmp_path / 'sk' / CHECKPOINT)['step_log']]
    assert sum(e['loss'] for e in h[-20:]) / 20 < sum(e['loss'] for e in h[:20]) / 20 - 0.3
    assert m['jaccard'] is not None and m['jaccard_init'] is not None

def test_course_model_export_load_and_hash_check(tmp_path):
    "export_course_model writes weights + manifest; load_course_model checks the hash and loads strictly; the shipped one loads."
    run = tmp_path / 'run'
    m = train(tiny(tmp_path), verbose=False)
    w = T.export_course_model(run, 'tiny', command='pytest', models_dir=tmp_path / 'models')
    net, manifest = T.load_course_model('tiny', models_dir=tmp_path / 'models')
    assert manifest['command'] == 'pytest' and manifest['knn_top1'] == m['knn_top1'] and not net.training
    x = torch.rand(2, 3, 16, 16)
    ref = T.backbone_from_config(T.TrainConfig.from_dict(manifest['config']))
    ref.load_state_dict(torch.load(run / 'backbone.pth', weights_only=True)); ref.eval()
    torch.testing.assert_close(net(x), ref(x))
    data = bytearray(w.read_bytes()); data[-10] ^= 0xFF; w.write_bytes(bytes(data))   # a damaged file is refused
    with pytest.raises(ResumeError, match='SHA-256'): T.load_course_model('tiny', models_dir=tmp_path / 'models')
    with pytest.raises(FileNotFoundError, match="known: tiny"): T.load_course_model('nope', models_dir=tmp_path / 'models')
    shipped, man = T.load_course_model('dino_vit_conv_shapes')        # the course's model (data/models/)
    assert man['knn_top1'] > man['knn_top1_init'] + 10 and shipped.embed_dim == 128


def test_koleo_adds_to_the_dino_loss_with_its_weight():
    """`koleo_weight` w: the method's loss is DINO's loss + w * KoLeo of the student's global-crop features (each crop
    separately, averaged), logged as `koleo`; w = 0 is the paper's DINO and logs no KoLeo."""
    torch.manual_seed(0)
    cfg = TrainConfig(**{**TINY, 'koleo_weight': 0.3})
    method = DINOMethod(cfg, T.backbone_from_config(cfg), 2, 3)
    crops = [torch.randn(8, 3, 16, 16) for _ in range(2)] + [torch.randn(8, 3, 8, 8) for _ in range(2)]
    loss, stats = method.training_step(crops, 0)
    feats = method.student.backbone(torch.cat(crops[:2]))
    koleo = (koleo_loss(feats[:8]) + koleo_loss(feats[8:])) / 2
    torch.testing.assert_close(stats['koleo'], koleo.detach(), rtol=1e-5, atol=1e-6)
    method.cfg = replace(cfg, koleo_weight=0.)
    loss0, stats0 = method.training_step(crops, 0)
    assert 'koleo' not in stats0
    torch.testing.assert_close(loss - loss0, 0.3 * koleo.detach(), rtol=1e-4, atol=1e-5)


def test_long_course_model_loads_and_has_learned():
    "The 120-epoch course model (issue 9, point 5) loads hash-checked, and its manifest records a learned teacher."
    net, man = T.load_course_model('dino_vit_conv_shapes_long')
    assert man['steps'] == 12000 and man['knn_top1'] > man['knn_top1_init'] + 60 and man['jaccard'] > man['jaccard_init'] + 0.2
    assert net.embed_dim == 128 and not net.training
