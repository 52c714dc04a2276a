"Tests of dino_course.learner: the Trainer's callbacks (checkpoint, time budget) and the methods registry."
import json, time
from dataclasses import replace
import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F
from dino_course.learner import (SSLMethod, Trainer, Callback, Checkpoint, KNNMonitor, Log, NonFiniteGuard, StepLimit, TimeBudget,
                                 load_checkpoint, CHECKPOINT)
from dino_course.evaluate import KNNEvaluator
from dino_course.train import (TrainConfig, train, make_trainer, validate_config, get_method, register_method, METHODS, ConfigError,
                               DINOMethod)
from test_train import tiny, TINY


class Points:
    "Two views of noisy points of 4 clusters; step (e, it) is seeded by (e, it)."
    niter_per_ep = 5
    centers = torch.tensor([[2., 0.], [0., 2.], [-2., 0.], [0., -2.]])
    def __init__(self, delay=0.): self.delay = delay
    def epoch(self, e, start=0):
        for it in range(start, self.niter_per_ep):
            if self.delay: time.sleep(self.delay)
            g = torch.Generator().manual_seed(1000 * e + it)
            x = self.centers[torch.randint(0, 4, (32,), generator=g)] + 0.3 * torch.randn(32, 2, generator=g)
            yield [x + 0.1 * torch.randn(32, 2, generator=g), x + 0.1 * torch.randn(32, 2, generator=g)]

class TwoViews(SSLMethod):
    def __init__(self):
        super().__init__(None, None, 1, 1)
        self.student = nn.Sequential(nn.Linear(2, 8))
    def eval_backbone(self): return self.student
    def training_step(self, views, step):
        z1, z2 = self.student_forward(views[0]), self.student_forward(views[1])
        return (z1 - z2).pow(2).mean() + F.relu(1 - z1.std(0)).mean(), {}

def points_trainer(run_dir, epochs=3, callbacks=(), resume=None, delay=0.):
    torch.manual_seed(0)
    method = TwoViews()
    g = torch.Generator().manual_seed(1)
    bank = lambda n: (Points.centers[torch.arange(n) % 4] + 0.3 * torch.randn(n, 2, generator=g), torch.arange(n) % 4)
    cbs = [Checkpoint(run_dir, {'method': 'two_views'}, resume), KNNMonitor(KNNEvaluator(bank(80), bank(40), k=5)), NonFiniteGuard(),
           Log(run_dir, verbose=False), *callbacks]
    return Trainer(method, Points(delay), torch.optim.AdamW(method.parameters()), np.full(100, 1e-2), np.full(100, 1e-4), epochs, cbs)

def test_trainer_resumes_bit_for_bit(tmp_path):
    full = points_trainer(tmp_path / 'full').fit()
    assert full['stopped'] == 'finished' and full['steps'] == 15
    assert points_trainer(tmp_path / 'cut', callbacks=[StepLimit(7)]).fit()['stopped'] == 'step limit'
    points_trainer(tmp_path / 'cut', resume=load_checkpoint(tmp_path / 'cut' / CHECKPOINT)).fit()
    a, b = (load_checkpoint(tmp_path / d / CHECKPOINT) for d in ('full', 'cut'))
    assert all(torch.equal(a['student'][k], b['student'][k]) for k in a['student'])
    assert (b['epoch'], b['step']) == (3, 15)

class Broken(Callback):
    "Raises in `event` once the run reaches `step` (after a period: it runs after `Checkpoint`, whose order is 0)."
    def __init__(self, step=5, event='after_period'): self.step = step; setattr(self, event, self.boom)
    def boom(self, t, *args):
        if t.step >= self.step: raise RuntimeError('callback failed')

@pytest.mark.parametrize('event', ['after_period', 'after_step'])
def test_a_callback_that_raises_does_not_lose_the_checkpoint(tmp_path, event):
    "A failing callback stops the run; the last checkpoint is on disk, readable, and resuming from it ends with the same bits."
    points_trainer(tmp_path / 'full').fit()
    with pytest.raises(RuntimeError, match='callback failed'): points_trainer(tmp_path / 'run', callbacks=[Broken(5 if event == 'after_period' else 7, event)]).fit()
    ck = load_checkpoint(tmp_path / 'run' / CHECKPOINT)
    assert (ck['epoch'], ck['step']) == (1, 5)          # the first epoch's checkpoint
    assert not list((tmp_path / 'run').glob('.*.tmp'))
    points_trainer(tmp_path / 'run', resume=ck).fit()
    a, b = (load_checkpoint(tmp_path / d / CHECKPOINT) for d in ('full', 'run'))
    assert all(torch.equal(a['student'][k], b['student'][k]) for k in a['student'])

def test_a_failing_callback_keeps_the_checkpoint_of_a_real_run(tmp_path):
    "On `train`'s trainer too: the checkpoint of epoch 1 survives a callback that fails after it, and `train` resumes it."
    cfg = tiny(tmp_path)
    t = make_trainer(validate_config(cfg), verbose=False)
    t.callbacks.append(Broken(TINY['steps_per_epoch']))
    with pytest.raises(RuntimeError, match='callback failed'): t.fit()
    assert load_checkpoint(tmp_path / 'run' / CHECKPOINT)['step'] == TINY['steps_per_epoch']
    m = train(cfg, verbose=False)
    assert m['stopped'] == 'finished' and m['steps'] == 2 * TINY['steps_per_epoch']

def test_time_budget_stops_at_the_budget(tmp_path):
    "TimeBudget: the loop runs past `epochs` until the budget, stops within a step of it, and the schedules end there."
    budget = 4.
    t = points_trainer(tmp_path / 'tb', epochs=2, callbacks=[TimeBudget(budget / 60)], delay=0.05)
    m = t.fit()
    assert m['stopped'] == 'finished' and t.progress == 1.
    assert budget - 2 - 2 < m['seconds'] < budget + 2, m['seconds']    # less the reserve (2 s and an evaluation), plus a step
    assert m['steps'] > 2 * Points.niter_per_ep             # more steps than the nominal epochs: it followed the clock
    assert json.loads((tmp_path / 'tb' / 'log.jsonl').read_text().splitlines()[-1])['progress'] == 1.

def test_time_budget_without_schedules_only_stops(tmp_path):
    t = points_trainer(tmp_path / 'tb', epochs=1000, callbacks=[TimeBudget(2 / 60, schedules=False)], delay=0.05)
    m = t.fit()
    assert m['stopped'] == 'time budget' and t.progress == 0.

def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ConfigError, match='known: .*dino.*simclr') as e: get_method('swav')
    assert '--method' in str(e.value)
    with pytest.raises(ConfigError, match='known: '): validate_config(TrainConfig(method='swav'))

def test_a_minimal_second_method_is_one_class_and_one_registry_line(tmp_path):
    "A supervised method (labels from the stream) trains through `train` with nothing else changed."
    class Supervised(SSLMethod):
        def __init__(self, cfg, backbone, epochs, niter_per_ep):
            super().__init__(cfg, backbone, epochs, niter_per_ep)
            self.student = nn.Sequential(); self.student.backbone = backbone
            self.student.add_module('classifier', nn.Linear(backbone.embed_dim, 10))
        @classmethod
        def augmentation(cls, cfg, per_image=False): return DINOMethod.augmentation(replace(cfg, n_local=0), per_image)
        def training_step(self, views, step):
            return F.cross_entropy(self.student.classifier(self.student.backbone(views[0])), views.labels), {}
    register_method('minimal', Supervised)
    try:
        m = train(tiny(tmp_path, method='minimal'), verbose=False)
        assert m['method'] == 'minimal' and m['steps'] == 6 and m['knn_top1'] is not None
    finally: METHODS.pop('minimal')
