"""Prototype: BYOL with asymmetric views (Wang et al. 2022, "On the importance of asymmetry for siamese representation
learning"): the online network sees two strongly augmented views, the target one weakly augmented view (larger crop,
no colour jitter or grayscale); each online view predicts the target's projection of the weak view.
    python byol_asym.py OUT [weak_scale=0.6] [field=value ...]   (700 steps, one thread, as `runs_700` in byol_search_shapes.json)"""
import json, sys, torch
from torch import nn
import dino_course.train as T, dino_course.byol as B
from dino_course.augment import BatchMultiCrop
from dino_course.learner import make_augmentation
out = sys.argv[1]; extra = dict(a.split('=') for a in sys.argv[2:])
weak_scale = float(extra.pop('weak_scale', 0.6))
class Asym(nn.Module):
    def __init__(self, strong, weak):
        super().__init__(); self.strong, self.weak = strong, weak
    def forward(self, images, generator=None):
        return self.strong(images, generator)[:2] + self.weak(images, generator)[:1]
@classmethod
def augmentation(cls, cfg, per_image=False):
    strong = make_augmentation(BatchMultiCrop, cfg)
    weak = make_augmentation(BatchMultiCrop, cfg, global_scale=(weak_scale, 1.0), p_jitter=0.0, p_gray=0.0)
    return Asym(strong, weak)
B.BYOLMethod.augmentation = augmentation
def training_step(self, views, step):
    z, p = self.student_forward(views[:2]); p1, p2 = p.chunk(2)
    with torch.no_grad(): t = self.target(views[2])
    return B.byol_loss(p1, t) + B.byol_loss(p2, t), {'std': B.output_std(z.detach())}
B.BYOLMethod.training_step = training_step
cfg = dict(method='byol', data='shapes', epochs=7, eval_every=1, threads=1, figures=False, out=out, aug='batched')
def value(v):
    try: return json.loads(v)
    except ValueError: return v
cfg.update({k: value(v) for k, v in extra.items()})
m = T.train(**cfg)
print(out, extra, weak_scale, [round(e['knn_top1'], 1) for e in m['knn_curve']], round(m['seconds']))
