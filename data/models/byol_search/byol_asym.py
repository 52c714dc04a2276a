"""Prototype: BYOL with asymmetric views (Wang et al. 2022, "On the importance of asymmetry for siamese representation
learning"): the online network sees two strongly augmented views, the target one weakly augmented view (larger crop,
no colour jitter or grayscale); each online view predicts the target's projection of the weak view.
    python byol_asym.py OUT [weak_scale=0.6] [field=value ...]   (700 steps, one thread, as `runs_700` in byol_search_shapes.json)"""
import sys, torch
from torch import nn
import dino_course.byol as B
from _common import run
from dino_course.augment import BatchMultiCrop
from dino_course.learner import make_augmentation
out = sys.argv[1]
fields = [a for a in sys.argv[2:] if not a.startswith('weak_scale=')]
weak_scale = float(next((a.split('=', 1)[1] for a in sys.argv[2:] if a.startswith('weak_scale=')), 0.6))
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
run(out, fields, 7, f'asymmetric views, weak crop area {weak_scale}-1')
