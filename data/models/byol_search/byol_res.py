"""Prototype: BYOL with a residual predictor q(z) = z + MLP(z), the MLP's last layer zero-initialised, so the
predictor starts as the identity.
    python byol_res.py OUT [field=value ...]   (700 steps, one thread, as `runs_700` in byol_search_shapes.json)"""
import sys
from torch import nn
import dino_course.byol as B
from _common import run
class Res(nn.Module):
    def __init__(self, m):
        super().__init__(); self.m = m
        nn.init.zeros_(m[-1].weight); nn.init.zeros_(m[-1].bias)
    def forward(self, z): return z + self.m(z)
init = B.BYOLMethod.__init__
def __init__(self, cfg, backbone, epochs, niter_per_ep):
    init(self, cfg, backbone, epochs, niter_per_ep)
    self.student.predictor = Res(self.student.predictor)
B.BYOLMethod.__init__ = __init__
run(sys.argv[1], sys.argv[2:], 7, 'residual predictor')
