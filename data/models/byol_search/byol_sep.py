"""Prototype: BYOL with each view through the networks on its own (BatchNorm statistics per view, as BYOL's reference
code), instead of the package's one pass over both views.
    python byol_sep.py OUT [field=value ...]   (700 steps, one thread, as `runs_700` in byol_search_shapes.json)"""
import sys, torch
import dino_course.byol as B
from _common import run
out = sys.argv[1]
def training_step(self, views, step):
    z1, p1 = self.student_forward(views[0]); z2, p2 = self.student_forward(views[1])
    with torch.no_grad(): t1, t2 = self.target(views[0]), self.target(views[1])
    return B.byol_loss(p1, t2) + B.byol_loss(p2, t1), {'std': B.output_std(torch.cat([z1, z2]).detach())}
B.BYOLMethod.training_step = training_step
run(out, sys.argv[2:], 7, 'views apart')
