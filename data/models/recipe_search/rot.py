"DINO with random rotations of each view (continuous angle, reflection padding); args: out [k=v overrides as JSON values]"
import sys, json, math, torch, torch.nn.functional as F
from dino_course import train as T
def rotate(x, g, p=1.0):
    B = len(x); a = torch.rand(B, generator=g) * 2 * math.pi
    keep = torch.rand(B, generator=g) >= p; a[keep] = 0.
    c, s = torch.cos(a), torch.sin(a); z = torch.zeros(B)
    theta = torch.stack([torch.stack([c, -s, z], 1), torch.stack([s, c, z], 1)], 1).to(x.device, x.dtype)   # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode='bilinear', padding_mode='reflection', align_corners=False)
orig = T.ShapesStream.crops
def crops(self, images, step):
    views = orig(self, images, step)
    g = torch.Generator().manual_seed(T.step_seed(self.cfg.seed, step, 77))
    return [rotate(v, g) for v in views]
T.ShapesStream.crops = crops
kw = {k: json.loads(v) for k, v in (a.split('=', 1) for a in sys.argv[2:])}
T.train(data='shapes', out=sys.argv[1], **kw)
