"""Prototype BYOL variants: python byol_var.py OUT VARIANT [field=value ...]
VARIANT: base | linpred (linear predictor) | lastbn (BatchNorm on the projector output, SimSiam) | target_eval (kNN on the
EMA target's backbone). 500 steps, one thread, as the search in byol_search_shapes.json."""
import sys, torch
from torch import nn
import dino_course.byol as B
from _common import run
out, var = sys.argv[1], sys.argv[2]
if var == 'linpred':
    orig = B.mlp
    def mlp(dims, last_bn=False):
        if len(dims) == 3 and dims[0] == dims[2] and dims[0] != 128: return nn.Linear(dims[0], dims[2])   # the predictor (d -> h -> d)
        return orig(dims, last_bn)
    B.mlp = mlp
if var == 'lastbn':
    orig2 = B.mlp
    def mlp2(dims, last_bn=False):
        if dims[0] == 128: return orig2(dims, True)          # the projector (backbone width 128): BN on its output too (SimSiam)
        return orig2(dims, last_bn)
    B.mlp = mlp2
if var == 'target_eval':
    B.BYOLMethod.eval_backbone = lambda self: self.target.backbone
run(out, sys.argv[3:], 5, var)
