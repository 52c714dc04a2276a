"""Prototype: BYOL with multi-crop: online on 2 global + n local crops, target on the 2 globals; every online crop
predicts the target projection of each global view other than itself (the multi-crop of SwAV and DINO).
    python byol_mc.py OUT [n_local=4] [local_size=16] [field=value ...]   (700 steps, one thread, as `runs_700`)"""
import sys, torch
import dino_course.byol as B
from _common import run
from dino_course.augment import BatchMultiCrop
from dino_course.learner import make_augmentation
out = sys.argv[1]
kv = dict(a.split('=', 1) for a in sys.argv[2:])
n_local = int(kv.pop('n_local', 4)); local_size = int(kv.pop('local_size', 16))
fields = [f'{k}={v}' for k, v in kv.items()]
@classmethod
def augmentation(cls, cfg, per_image=False):
    return make_augmentation(BatchMultiCrop, cfg, n_local=n_local, local_size=local_size, local_scale=(0.05, 0.4))
B.BYOLMethod.augmentation = augmentation
def training_step(self, views, step):
    z, p = self.student_forward(views[:2]); pg = list(p.chunk(2))
    pl = list(self.student_forward(views[2:])[1].chunk(len(views) - 2)) if len(views) > 2 else []
    with torch.no_grad(): t = self.target(views[:2]).chunk(2)
    loss, n = 0., 0
    for i, pi in enumerate(pg + pl):
        for j, tj in enumerate(t):
            if i == j: continue
            loss = loss + B.byol_loss(pi, tj); n += 1
    return 2 * loss / n, {'std': B.output_std(z.detach())}
B.BYOLMethod.training_step = training_step
run(out, fields, 7, f'multi-crop, {n_local} local crops of {local_size}px')
