"""DINO-on-CPU recipe search (issue 9). Uses the package's data, augmentation, head, kNN; prototypes a conv-stem ViT
and a Sinkhorn-Knopp teacher. Prints kNN top-1 against training seconds as JSON lines."""
import argparse, json, math, time, sys
import torch, torch.nn as nn, torch.nn.functional as F
from dino_course.data import make_shapes
from dino_course.augment import BatchTwoView, BatchMultiCrop
from dino_course.dino import DINOHead, MultiCropWrapper, build_teacher, update_teacher, get_params_groups, entropy
from dino_course.evaluate import extract_features, knn_classifier
from dino_course.vit import VisionTransformer, Block

p = argparse.ArgumentParser()
p.add_argument('--arch', default='hybrid'); p.add_argument('--dim', type=int, default=128); p.add_argument('--depth', type=int, default=2)
p.add_argument('--heads', type=int, default=4); p.add_argument('--mlp', type=float, default=4.)
p.add_argument('--stem', default='32,64,128'); p.add_argument('--grid', type=int, default=8)
p.add_argument('--minutes', type=float, default=5); p.add_argument('--threads', type=int, default=2)
p.add_argument('--bs', type=int, default=128); p.add_argument('--lr', type=float, default=2e-3); p.add_argument('--wd', type=float, default=0.04)
p.add_argument('--K', type=int, default=256); p.add_argument('--hidden', type=int, default=512); p.add_argument('--bottleneck', type=int, default=64)
p.add_argument('--bn', type=int, default=1); p.add_argument('--mom', type=float, default=0.95); p.add_argument('--mom_end', type=float, default=None)
p.add_argument('--tt', type=float, default=0.04); p.add_argument('--st', type=float, default=0.1)
p.add_argument('--teacher', default='sk'); p.add_argument('--sk_iters', type=int, default=3)
p.add_argument('--scale', default='0.3,1'); p.add_argument('--nlocal', type=int, default=0); p.add_argument('--lsize', type=int, default=16)
p.add_argument('--lscale', default='0.1,0.4'); p.add_argument('--shuffle', type=float, default=0.5)
p.add_argument('--freeze', type=int, default=100); p.add_argument('--eval_every', type=float, default=60)
p.add_argument('--size', type=int, default=32); p.add_argument('--seed', type=int, default=0); p.add_argument('--warmup', type=int, default=0)
p.add_argument('--pool', default='cls'); p.add_argument('--jitter', default='0.4,0.4,0.2,0.1'); p.add_argument('--sigma', default='0.1,2.0'); p.add_argument('--solar', type=float, default=0.2); p.add_argument('--blur1', type=float, default=1.0); p.add_argument('--steps', type=int, default=0); p.add_argument('--eval_steps', type=int, default=100); p.add_argument('--clip', type=float, default=3.0)
a = p.parse_args()
torch.set_num_threads(a.threads); torch.manual_seed(a.seed)

def conv_block(i, o, pool=True):
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True), *( [nn.MaxPool2d(2)] if pool else []))

class CNN(nn.Module):
    def __init__(s, widths=(32, 64, 128, 128)):
        super().__init__(); ws = (3,) + tuple(widths)
        s.features = nn.Sequential(*[conv_block(ws[i], ws[i + 1]) for i in range(len(widths))]); s.embed_dim = widths[-1]
    def forward(s, x): return s.features(x.contiguous(memory_format=torch.channels_last)).mean((2, 3))

class ConvStem(nn.Module):
    "conv blocks, pooling down to a grid; tokens (B, N, D)"
    def __init__(s, img_size, widths, dim, grid):
        super().__init__(); ws = (3,) + tuple(widths); n_pool = int(math.log2(img_size // grid))
        blocks = [conv_block(ws[i], ws[i + 1], pool=i < n_pool) for i in range(len(widths))]
        s.convs = nn.Sequential(*blocks); s.proj = nn.Conv2d(ws[-1], dim, 1)
        s.grid_size = (grid, grid); s.num_patches = grid * grid; s.patch_size = (img_size // grid,) * 2; s.img_size = (img_size, img_size)
    def forward(s, x): return s.proj(s.convs(x.contiguous(memory_format=torch.channels_last))).flatten(2).transpose(1, 2)

def hybrid():
    m = VisionTransformer(img_size=a.size, patch_size=a.size // a.grid, embed_dim=a.dim, depth=a.depth, num_heads=a.heads, mlp_ratio=a.mlp)
    m.patch_embed = ConvStem(a.size, [int(w) for w in a.stem.split(',')], a.dim, a.grid)
    if a.pool == 'mean':
        f = m.forward
        m.forward = lambda x: torch.cat([m.forward_features(x)[:, 0], m.forward_features(x)[:, 1:].mean(1)], -1)
    return m

class ClassAttnBlock(nn.Module):
    "CaiT class attention: only the class token queries; patch tokens are left as they are."
    def __init__(s, dim, heads, mlp=4.):
        super().__init__(); s.norm1 = nn.LayerNorm(dim, eps=1e-6); s.q = nn.Linear(dim, dim); s.kv = nn.Linear(dim, 2 * dim)
        s.proj = nn.Linear(dim, dim); s.norm2 = nn.LayerNorm(dim, eps=1e-6); s.h = heads
        s.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp)), nn.GELU(), nn.Linear(int(dim * mlp), dim))
    def forward(s, x, return_attention=False):
        B, N, D = x.shape; u = s.norm1(x); hd = D // s.h
        q = s.q(u[:, :1]).view(B, 1, s.h, hd).transpose(1, 2)                 # (B, h, 1, hd)
        k, v = s.kv(u).view(B, N, 2, s.h, hd).permute(2, 0, 3, 1, 4)          # (B, h, N, hd)
        attn = (q @ k.transpose(-2, -1) * hd ** -0.5).softmax(-1)            # (B, h, 1, N)
        c = (attn @ v).transpose(1, 2).reshape(B, 1, D)
        c = x[:, :1] + s.proj(c); c = c + s.mlp(s.norm2(c))
        return (c, attn) if return_attention else c
class CAttn(nn.Module):
    def __init__(s):
        super().__init__(); s.stem = ConvStem(a.size, [int(w) for w in a.stem.split(',')], a.dim, a.grid)
        s.cls = nn.Parameter(torch.zeros(1, 1, a.dim)); s.pos = nn.Parameter(torch.randn(1, a.grid * a.grid, a.dim) * .02)
        s.blocks = nn.ModuleList([ClassAttnBlock(a.dim, a.heads, a.mlp) for _ in range(a.depth)]); s.norm = nn.LayerNorm(a.dim, eps=1e-6)
        s.embed_dim = a.dim
    def forward(s, x):
        t = s.stem(x); g = int(t.shape[1] ** .5)
        pos = s.pos if t.shape[1] == s.pos.shape[1] else F.interpolate(s.pos.reshape(1, a.grid, a.grid, -1).permute(0, 3, 1, 2), size=(g, g), mode='bicubic').flatten(2).transpose(1, 2)
        t = t + pos; c = s.cls.expand(len(x), -1, -1)
        for b in s.blocks: c = b(torch.cat([c, t], 1))
        return s.norm(c[:, 0])
backbone = CNN() if a.arch == 'cnn' else CAttn() if a.arch == 'cattn' else hybrid()
print('params', sum(p.numel() for p in backbone.parameters()), file=sys.stderr)
head = DINOHead(backbone.embed_dim, a.K, use_bn=bool(a.bn), hidden_dim=a.hidden, bottleneck_dim=a.bottleneck)
student = MultiCropWrapper(backbone, head); teacher = build_teacher(student)
if a.nlocal:
    aug = BatchMultiCrop(global_size=a.size, local_size=a.lsize, n_local=a.nlocal, global_scale=tuple(map(float, a.scale.split(','))),
                         local_scale=tuple(map(float, a.lscale.split(','))), p_channel_shuffle=a.shuffle)
else:
    aug = BatchTwoView(size=a.size, scale=tuple(map(float, a.scale.split(','))), p_channel_shuffle=a.shuffle, jitter=tuple(map(float, a.jitter.split(','))), sigma=tuple(map(float, a.sigma.split(','))), p_solarize=(0., a.solar), blur=(a.blur1, 0.1))
opt = torch.optim.AdamW(get_params_groups(student), lr=a.lr, weight_decay=a.wd)
center = torch.zeros(1, a.K)

def sinkhorn(logits, temp, iters):
    Q = torch.exp((logits - logits.max()) / temp).t()   # K x B
    Q /= Q.sum(); K, B = Q.shape
    for _ in range(iters):
        Q /= Q.sum(1, keepdim=True); Q /= K
        Q /= Q.sum(0, keepdim=True); Q /= B
    return (Q * B).t()

def bank(n, seed):
    im, y, _ = make_shapes(n, a.size, seed=seed); return torch.from_numpy(im).permute(0, 3, 1, 2), torch.from_numpy(y)
tr, te = bank(5000, 10**9 + 7), bank(2000, 10**9 + 9)
def knn(model):
    f1, y1 = extract_features(model, tr); f2, y2 = extract_features(model, te); return knn_classifier(f1, y1, f2, y2, k=20, T=0.07)
t0 = time.time(); k0 = knn(teacher.backbone); print(json.dumps(dict(step=0, sec=0, knn=k0)), flush=True)
train_sec, step, next_eval, budget = 0.0, 0, a.eval_every, a.minutes * 60
est_steps = None
while (step < a.steps) if a.steps else (train_sec < budget):
    ts = time.time()
    im, _, _ = make_shapes(a.bs, a.size, seed=step + 1000 * a.seed)
    views = aug(torch.from_numpy(im).permute(0, 3, 1, 2), generator=torch.Generator().manual_seed(step))
    with torch.no_grad():
        t_out = teacher(views[:2])
        if a.teacher == 'sk': pt = sinkhorn(t_out, a.tt, a.sk_iters)
        else: pt = F.softmax((t_out - center) / a.tt, -1)
    s_out = student(views)
    log_ps = F.log_softmax(s_out / a.st, -1).unflatten(0, (-1, a.bs)); pt2 = pt.unflatten(0, (2, a.bs))
    ce = -torch.einsum('tbk,sbk->ts', pt2, log_ps) / a.bs
    mask = ~torch.eye(*ce.shape, dtype=torch.bool); loss = ce[mask].mean()
    if a.teacher != 'sk': center = 0.9 * center + 0.1 * t_out.mean(0, keepdim=True)
    if a.warmup:
        for g in opt.param_groups: g['lr'] = a.lr * min(1, (step + 1) / a.warmup)
    opt.zero_grad(); loss.backward()
    if a.clip: nn.utils.clip_grad_norm_(student.parameters(), a.clip)
    if step < a.freeze:
        for n_, p_ in student.named_parameters():
            if 'last_layer' in n_: p_.grad = None
    opt.step()
    m = a.mom
    if a.mom_end is not None:   # cosine over an estimated step count from elapsed time
        frac = min(1., train_sec / budget); m = a.mom_end - (a.mom_end - a.mom) * (math.cos(math.pi * frac) + 1) / 2
    update_teacher(student, teacher, m)
    step += 1; train_sec += time.time() - ts
    if (step % a.eval_steps == 0 or step == a.steps) if a.steps else (train_sec >= next_eval or train_sec >= budget):
        h = entropy(pt).mean().item(); hm = entropy(pt.mean(0)).item()
        print(json.dumps(dict(step=step, sec=round(train_sec), imgs=step * a.bs, ips=round(step * a.bs / train_sec), knn=knn(teacher.backbone),
                              loss=round(loss.item(), 3), h=round(h, 3), hmean=round(hm, 3))), flush=True)
        next_eval += a.eval_every
print(json.dumps(dict(final=True, wall=round(time.time() - t0), args=vars(a))), flush=True)
