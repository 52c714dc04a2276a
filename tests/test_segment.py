"Tests of lesson 09 (dino_course.segment): attention masks, Jaccard, blob removal, official weights by name, commands."
import hashlib, http.server, threading
from functools import partial
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image
from dino_course.segment import (mask_from_attention, jaccard, combine_heads, upsample, head_attention, voc_targets, remove_blobs,
                                 attention_jaccards, PRETRAINED, Pretrained, pretrained_path, load_pretrained, pretrained_model,
                                 LinearClassifier, load_backbone, nearest_neighbours, same_class_share, attention_explorer, evaluate_voc)
from dino_course import evaluate
from dino_course.data import ChecksumError, DownloadError
from dino_course.train import ConfigError
from dino_course.vit import build_backbone, CheckpointMismatchError
from dino_course.cli import main
from dino_course.course_models import TRAINED_DINO

def test_one_implementation():
    "segment's Jaccard is lesson 02b's; mask_from_attention gives 02b's mass_masks."
    assert jaccard is evaluate.jaccard
    m = torch.rand(3, 5, 5)
    assert torch.equal(mask_from_attention(m, 0.6), evaluate.mass_masks(m, 0.6))

@pytest.mark.parametrize('keep', [0.1, 0.6, 0.9, 1.0])
def test_mask_keeps_fraction_and_is_minimal(keep):
    g = torch.Generator().manual_seed(0)
    attn = torch.rand(4, 3, 7, 9, generator=g) ** 3                 # (..., H, W) with two leading dims
    mask = mask_from_attention(attn, keep)
    assert mask.shape == attn.shape and mask.dtype == torch.bool
    attn = attn.double()                                            # the checks in float64: no round-off at keep=1
    total = attn.flatten(-2).sum(-1)
    kept = (attn * mask).flatten(-2).sum(-1)
    assert (kept >= keep * total - 1e-5).all()                      # at least the asked mass
    weakest = torch.where(mask, attn, torch.inf).flatten(-2).amin(-1)
    assert (kept - weakest < keep * total).all()                    # minimal: dropping its weakest pixel falls short
    outside = torch.where(mask, -torch.inf, attn).flatten(-2).amax(-1)
    assert (outside <= weakest).all()                               # highest-attention pixels: nothing outside beats the inside

def test_mask_small_cases_and_errors():
    m = torch.tensor([[0.5, 0.3], [0.15, 0.05]])
    assert mask_from_attention(m, 0.6).tolist() == [[True, True], [False, False]]
    assert mask_from_attention(m, 0.5).sum() == 1 and mask_from_attention(m, 1.0).all()
    assert mask_from_attention(m * 7, 0.6).tolist() == [[True, True], [False, False]]    # scale-free
    with pytest.raises(ValueError, match='non-negative'): mask_from_attention(-m)
    with pytest.raises(ValueError, match='fraction'): mask_from_attention(m, 1.5)

def test_jaccard_hand_made():
    a = torch.zeros(4, 4, dtype=torch.bool); b = a.clone()
    a[:2] = True; b[1:3] = True                                     # 8 px each, overlap 4
    assert jaccard(a, b).item() == pytest.approx(4 / 12)
    e = torch.zeros(4, 4, dtype=torch.bool)
    assert jaccard(e, e).item() == 1.0 and jaccard(a, e).item() == 0.0
    ignore = torch.zeros(4, 4, dtype=torch.bool); ignore[0] = True  # the first row counts for neither
    assert jaccard(a, b, ignore).item() == pytest.approx(4 / 8)
    assert jaccard(a, a, torch.ones(4, 4, dtype=torch.bool)).item() == 1.0      # everything ignored: both empty
    heads = torch.stack([a, b, e])[None]                            # (1, 3, H, W) against (1, 1, H, W): broadcast
    assert jaccard(heads, b[None, None]).shape == (1, 3)
    assert jaccard(heads, b[None, None])[0].tolist() == pytest.approx([4 / 12, 1.0, 0.0])

def test_voc_targets_two_methods_and_void():
    label = torch.zeros(6, 8, dtype=torch.long)
    label[1:4, 1:4] = 15; label[1:4, 0] = 255; label[3:5, 5:8] = 12
    t_big, ign = voc_targets(label, 'largest')
    t_all, ign2 = voc_targets(label.numpy(), 'union')
    assert t_big.sum() == 9 and t_all.sum() == 15 and ign.sum() == 3 and torch.equal(ign, ign2)
    pred = torch.zeros(6, 8, dtype=torch.bool); pred[1:5, 0:4] = True
    assert jaccard(pred, t_big, ign).item() == pytest.approx(9 / 13)
    assert jaccard(pred, t_all, ign).item() == pytest.approx(9 / 19)
    assert jaccard(pred, t_big).item() == pytest.approx(9 / 16)     # without ignoring void the border is a false positive
    empty, _ = voc_targets(torch.zeros(3, 3, dtype=torch.long), 'largest')
    assert not empty.any()
    tie = torch.tensor([[3, 3, 7, 7]])
    assert voc_targets(tie, 'largest')[0].tolist() == [[True, True, False, False]]          # a tie: the lower class
    with pytest.raises(ValueError, match='union'): voc_targets(label, 'biggest')

def test_remove_blobs_synthetic():
    m = torch.zeros(2, 10, 10, dtype=torch.bool)
    m[0, 2:6, 2:6] = True; m[0, 8, 8] = True; m[0, 0, 9] = True; m[0, 8:10, 0:2] = True
    obj = torch.zeros(10, 10, dtype=torch.bool); obj[2:6, 2:6] = True
    assert remove_blobs(m, min_size=2)[0].sum() == 20
    assert torch.equal(remove_blobs(m, keep_largest=1)[0], obj)
    assert remove_blobs(m, min_size=5)[0].sum() == 16 and not remove_blobs(m, min_size=5)[1].any()
    d = torch.zeros(1, 4, 4, dtype=torch.bool); d[0, 0, 0] = d[0, 1, 1] = True       # touching at a corner only
    assert remove_blobs(d, min_size=2).sum() == 0 and remove_blobs(d, min_size=2, connectivity=2).sum() == 2
    # on an attention map: an object plus stray hot pixels; removing blobs raises the Jaccard
    attn = torch.full((1, 16, 16), 0.01); attn[0, 4:10, 4:10] = 1.0; attn[0, 0, 15] = attn[0, 15, 0] = 3.0
    gt = torch.zeros(1, 16, 16, dtype=torch.bool); gt[0, 4:10, 4:10] = True
    raw = mask_from_attention(attn, 0.9)
    assert raw[0, 0, 15] and jaccard(remove_blobs(raw, min_size=4), gt) > jaccard(raw, gt)

def test_combine_heads_and_upsample():
    maps = torch.rand(2, 6, 4, 5)
    mx, mean = combine_heads(maps, 'max'), combine_heads(maps, 'mean')
    assert mx.shape == mean.shape == (2, 4, 5)
    assert (mx >= mean).all() and (mx <= maps.max()).all() and torch.equal(mx, maps.max(1).values)
    assert mx.min() >= 0 and mx.max() <= 1
    up = upsample(mx, (16, 20))
    assert up.shape == (2, 16, 20) and torch.equal(up[:, ::4, ::4], mx)
    assert upsample(mx > 0.5, 8).dtype == torch.bool
    with pytest.raises(ValueError): combine_heads(maps, 'median')

def test_head_attention_and_scores_on_a_vit():
    vit = build_backbone('vit_tiny', patch_size=8, img_size=32, depth=1, num_heads=3)
    imgs = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    maps = head_attention(vit, imgs)
    assert maps.shape == (2, 3, 4, 4) and (maps >= 0).all()
    gt = torch.zeros(2, 32, 32, dtype=torch.bool); gt[:, 8:24, 8:24] = True
    r = attention_jaccards(maps, gt)
    assert {'mean of heads', 'max over heads', 'best head', 'head 0', 'head 2'} <= r.keys()
    assert (r['best head'] >= torch.stack([r[f'head {i}'] for i in range(3)], 1).amax(1) - 1e-6).all()
    with pytest.raises(ValueError, match='ViT'): head_attention(build_backbone('resnet18', small_input=True), imgs)

def test_retrieval_helpers():
    bank = torch.tensor([[1., 0], [0, 1], [1, .1], [-1, 0]])
    idx = nearest_neighbours(torch.tensor([[1., 0.05]]), bank, k=2)
    assert idx.tolist() == [[0, 2]] or idx.tolist() == [[2, 0]]
    assert same_class_share(idx, torch.tensor([5, 6, 5, 7]), torch.tensor([5])) == 1.0

def test_explorer_callback():
    imgs = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    maps = torch.rand(3, 2, 4, 4)
    show, widget = attention_explorer(imgs, maps)
    fig, mask = show(image=1, head=0, threshold=0.5)
    assert mask.shape == (16, 16) and torch.equal(mask, upsample(mask_from_attention(maps[1, 0], 0.5), 16))
    import matplotlib.pyplot as plt; plt.close('all')

# ---------------------------------------------------------------- official weights, loopback server
# (the `server` and `no_proxy` fixtures: tests/conftest.py)

TINY = dict(patch_size=8, img_size=32, depth=2, embed_dim=48, num_heads=3)

def test_official_registry_layout():
    "The five backbones and their linear heads, at the release's URLs; the course ViT uses the official tensor names."
    for n in ('dino_vits16', 'dino_vits8', 'dino_vitb16', 'dino_vitb8', 'dino_resnet50'):
        assert PRETRAINED[n].url == f"https://dl.fbaipublicfiles.com/dino/{PRETRAINED[n].url.split('/')[-2]}/{PRETRAINED[n].filename}"
        assert n + '_linear' in PRETRAINED and PRETRAINED[n + '_linear'].filename.endswith('_linearweights.pth')
    assert PRETRAINED['dino_vits16'].url == 'https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth'
    sd = PRETRAINED['dino_vits8'].build().state_dict()
    official = {'cls_token', 'pos_embed', 'patch_embed.proj.weight', 'patch_embed.proj.bias', 'norm.weight', 'norm.bias'} | {
        f'blocks.{i}.{p}' for i in range(12) for p in ('norm1.weight', 'norm1.bias', 'attn.qkv.weight', 'attn.qkv.bias', 'attn.proj.weight',
                                                       'attn.proj.bias', 'norm2.weight', 'norm2.bias', 'mlp.fc1.weight', 'mlp.fc1.bias',
                                                       'mlp.fc2.weight', 'mlp.fc2.bias')}
    assert set(sd) == official and sd['pos_embed'].shape == (1, 785, 384) and sd['patch_embed.proj.weight'].shape == (384, 3, 8, 8)
    import torchvision                                  # hubconf's dino_resnet50: torchvision's resnet50 with fc = Identity
    tv = torchvision.models.resnet50(); tv.fc = torch.nn.Identity()
    ours = PRETRAINED['dino_resnet50'].build().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in tv.state_dict().items()}

def test_load_pretrained_by_name_over_http(server, tmp_path, monkeypatch):
    served, base, hits = server
    src = build_backbone('vit_tiny', **TINY)
    torch.save(src.state_dict(), served / 'fake_pretrain.pth')
    payload = (served / 'fake_pretrain.pth').read_bytes()
    monkeypatch.setitem(PRETRAINED, 'fake_vit', Pretrained(f'{base}/fake_pretrain.pth', 'vit_tiny', TINY, size=len(payload),
                                                           sha256=hashlib.sha256(payload).hexdigest()))
    root = tmp_path / 'data'
    with pytest.raises(FileNotFoundError, match=r'download http://127.0.0.1:\d+/fake_pretrain.pth and place it at .*data/weights/fake_pretrain.pth'):
        pretrained_path('fake_vit', root, download=False)
    model = build_backbone('vit_tiny', **TINY)
    report = load_pretrained(model, 'fake_vit', root=root, verbose=False)
    assert (root / 'weights' / 'fake_pretrain.pth').read_bytes() == payload and len(hits) == 1
    assert len(report.loaded) == len(src.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), src.state_dict().values()))
    assert isinstance(pretrained_model('fake_vit', root), type(src)) and len(hits) == 1     # cached: not fetched again
    # strict: the same file refused by another architecture
    with pytest.raises(CheckpointMismatchError): load_pretrained(build_backbone('vit_tiny', **{**TINY, 'depth': 1}), 'fake_vit', root=root)

def test_load_pretrained_refuses_bad_files(server, tmp_path, monkeypatch):
    served, base, _ = server
    torch.save(build_backbone('vit_tiny', **TINY).state_dict(), served / 'w.pth')
    payload = (served / 'w.pth').read_bytes()
    root = tmp_path / 'data'
    monkeypatch.setitem(PRETRAINED, 'bad_hash', Pretrained(f'{base}/w.pth', 'vit_tiny', TINY, sha256='0' * 64))
    with pytest.raises(ChecksumError, match='expected 0{64}'): pretrained_path('bad_hash', root)
    assert not (root / 'weights' / 'w.pth').exists()
    monkeypatch.setitem(PRETRAINED, 'bad_size', Pretrained(f'{base}/w.pth', 'vit_tiny', TINY, size=len(payload) + 1))
    with pytest.raises(ChecksumError, match='bytes, expected'): pretrained_path('bad_size', root)
    assert not (root / 'weights' / 'w.pth').exists()
    monkeypatch.setitem(PRETRAINED, 'gone', Pretrained(f'{base}/missing.pth', 'vit_tiny', TINY))
    with pytest.raises(DownloadError, match='Offline\\? download .*missing.pth and place it at'): pretrained_path('gone', root)
    with pytest.raises(ValueError, match='unknown weights'): pretrained_path('dino_vitz16', root)

def test_linear_head_loads_official_layout(tmp_path, server, monkeypatch):
    "A linear-weights file as eval_linear.py saves it (`state_dict` of a DDP LinearClassifier, plus optimizer state)."
    served, base, _ = server
    lin = torch.nn.Linear(12, 1000)
    torch.save({'epoch': 100, 'state_dict': {'module.linear.weight': lin.weight.data, 'module.linear.bias': lin.bias.data},
                'optimizer': {'state': {}, 'param_groups': []}, 'best_acc': 77.0}, served / 'lin.pth')
    monkeypatch.setitem(PRETRAINED, 'fake_linear', Pretrained(f'{base}/lin.pth', 'linear', dict(in_features=12)))
    head = pretrained_model('fake_linear', tmp_path)
    assert isinstance(head, LinearClassifier) and torch.equal(head.linear.weight, lin.weight)

def test_load_backbone_names():
    m, size = load_backbone('dino_vit_conv_shapes')
    r, _ = load_backbone('random:dino_vit_conv_shapes', seed=1)
    assert size == 32 and m.num_heads == r.num_heads and not torch.equal(m.cls_token, r.cls_token)
    t, size = load_backbone(TRAINED_DINO)                              # the lesson's model and its random twin
    rt, _ = load_backbone(f'random:{TRAINED_DINO}', seed=1)
    assert size == 32 and rt.state_dict().keys() == t.state_dict().keys() and not torch.equal(t.cls_token, rt.cls_token)
    with pytest.raises(ConfigError, match='unknown weights'): load_backbone('no_such_model')

# ---------------------------------------------------------------- commands
def test_cli_attention_on_a_real_photo(tmp_path, capsys):
    import skimage.data
    Image.fromarray(skimage.data.astronaut()).save(tmp_path / 'astronaut.png')
    out = tmp_path / 'out'
    assert main(['attention', str(tmp_path / 'astronaut.png'), '--weights', 'dino_vit_conv_shapes', '--threshold', '0.6',
                 '--image-size', '64', '--out', str(out)]) == 0
    d = out / 'astronaut'
    names = {p.name for p in d.iterdir()}
    assert {'img.png', 'attn-head0.png', 'attn-head3.png', 'attn-max.png', 'attn-mean.png', 'mask-head0.png', 'mask-max.png', 'overview.png'} <= names
    mask = np.asarray(Image.open(d / 'mask-max.png'))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255} and 0 < (mask > 0).mean() < 1
    assert np.asarray(Image.open(d / 'img.png')).shape == (64, 64, 3)

def test_cli_bad_inputs_exit_2(tmp_path, capsys):
    (tmp_path / 'junk.png').write_bytes(b'not an image')
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'ok.png')
    for argv, msg in ((['attention', str(tmp_path / 'missing.png')], 'no such image file'),
                      (['attention', str(tmp_path / 'junk.png')], 'not a readable image'),
                      (['attention', str(tmp_path / 'ok.png'), '--weights', 'dino_vitz16'], 'unknown weights'),
                      (['segment-eval', '--data', 'shapes', '--weights', 'nope'], 'unknown weights'),
                      (['segment-eval', '--data', 'voc', '--weights', 'dino_vit_conv_shapes', '--root', str(tmp_path)], 'not found')):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err

def test_cli_segment_eval_shapes(capsys):
    assert main(['segment-eval', '--data', 'shapes', '--weights', 'dino_vit_conv_shapes', '--limit', '64']) == 0
    out = capsys.readouterr().out
    assert 'mean of heads' in out and 'shapes (one object)' in out
    row = [l for l in out.splitlines() if l.startswith('shapes')][0]
    vals = [float(v) for v in row.split()[-3:]]
    assert all(0 < v < 1 for v in vals)

def test_cli_help_lists_commands(capsys):
    assert main(['attention', '--help']) == 0 and '--threshold' in capsys.readouterr().out
    from dino_course.segment import attention_command
    import inspect
    assert inspect.signature(attention_command).parameters['weights'].default == TRAINED_DINO == 'dino_vit_conv_shapes_long'
    assert main(['segment-eval', '--help']) == 0 and '--data' in capsys.readouterr().out

def test_evaluate_voc_on_fake_pairs():
    "evaluate_voc on in-memory (image, label) pairs: both methods, the void border ignored, any image size."
    vit = build_backbone('vit_tiny', patch_size=8, img_size=32, depth=1, num_heads=3)
    lab = torch.zeros(40, 56, dtype=torch.long); lab[10:30, 10:30] = 8; lab[9, 9:31] = 255; lab[5:8, 40:50] = 3
    items = [(torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8), lab)] * 2
    t = evaluate_voc(vit, items, size=32, progress=False)
    assert set(t) == {'largest', 'union'} and all(0 <= v <= 1 for d in t.values() for v in d.values())

def test_module_entry_point_sees_the_commands():
    "`python -m dino_course.cli` (as under torchrun) knows the commands this module registers, like the console script."
    import os, subprocess, sys
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, '-m', 'dino_course.cli', 'segment-eval', '--help'], capture_output=True, text=True,
                       timeout=180, env={**os.environ, 'PYTHONPATH': str(root)})
    assert r.returncode == 0 and '--data' in r.stdout, r.stderr

def test_cli_bad_weights_file_and_out(tmp_path, capsys, monkeypatch):
    "A corrupt official file already in place, and an --out that cannot be created: one line, exit code 2."
    monkeypatch.setenv('DINO_COURSE_DATA', str(tmp_path / 'data'))
    (tmp_path / 'data' / 'weights').mkdir(parents=True)
    (tmp_path / 'data' / 'weights' / PRETRAINED['dino_vits16'].filename).write_bytes(b'truncated download')
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'ok.png')
    (tmp_path / 'file').write_text('x')
    for argv, msg in ((['attention', str(tmp_path / 'ok.png'), '--weights', 'dino_vits16'], 'download it anew'),
                      (['attention', str(tmp_path / 'ok.png'), '--out', str(tmp_path / 'file' / 'sub')], 'cannot create it')):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
