"Tests for dino_course.vit: timm equivalence, attention paths, shapes, checkpoint loading, backbones, the conv stem."
import argparse, math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from dino_course.vit import (VIT_CONV_DEFAULTS, Attention, Block, CheckpointError, CheckpointMismatchError, ConvStem,
                             PatchEmbed, VisionTransformer, build_backbone, describe_state_dict, load_pretrained,
                             resample_pos_embed, vit_base, vit_conv, vit_small, vit_tiny)

torch.set_num_threads(min(2, torch.get_num_threads()))


def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad(): return (a(x) - b(x)).abs().max().item()


@pytest.fixture(scope='module')
def timm_s16():
    torch.manual_seed(0)
    return timm.create_model('vit_small_patch16_224', pretrained=False, num_classes=0, dynamic_img_size=True).eval()


# ---------------------------------------------------------------- timm equivalence

def test_timm_to_ours_strict_224(timm_s16):
    ours = vit_small(16).eval()
    ours.load_state_dict(timm_s16.state_dict(), strict=True)
    assert _max_diff(ours, timm_s16, torch.randn(2, 3, 224, 224)) < 1e-5


def test_ours_to_timm_strict_patch8():
    torch.manual_seed(1)
    ours = vit_tiny(8, img_size=112, depth=6).eval()
    theirs = timm.create_model('vit_tiny_patch16_224', patch_size=8, img_size=112, depth=6, pretrained=False, num_classes=0).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours2 = vit_tiny(8, img_size=112, depth=6).eval()
    ours2.load_state_dict(theirs.state_dict(), strict=True)   # and back
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad(): ref = theirs(x)
    assert (ours(x) - ref).abs().max() < 1e-5
    assert (ours2(x) - ref).abs().max() < 1e-5


def test_interpolated_96px_matches_timm(timm_s16):
    "timm resamples with anti-aliased bicubic: identical with pos_interpolation='timm'."
    ours = vit_small(16, pos_interpolation='timm').eval()
    ours.load_state_dict(timm_s16.state_dict(), strict=True)
    x = torch.randn(2, 3, 96, 96)
    assert _max_diff(ours, timm_s16, x) < 1e-5
    # non-square too: 128 x 80 px -> 8 x 5 patches
    assert _max_diff(ours, timm_s16, torch.randn(1, 3, 128, 80)) < 1e-5
    # DINO's resampler (the default) differs from timm's: measured about 8e-2 on LayerNorm'd features.
    ours.pos_interpolation = 'dino'
    d = _max_diff(ours, timm_s16, x)
    assert 1e-3 < d < 0.5, d


def test_dino_resampler_is_official_formula():
    "Our 'dino' mode equals facebookresearch/dino's interpolate_pos_encoding for square inputs."
    pos = torch.randn(1, 1 + 14 * 14, 24)
    N, dim = 196, 24
    for px in (96, 224 + 16, 480):
        w0 = h0 = px // 16 + 0.1
        ref = F.interpolate(pos[:, 1:].reshape(1, 14, 14, dim).permute(0, 3, 1, 2),
                            scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode='bicubic')
        ref = torch.cat((pos[:, :1], ref.permute(0, 2, 3, 1).view(1, -1, dim)), dim=1)
        assert torch.equal(resample_pos_embed(pos, (px // 16, px // 16), mode='dino'), ref)
    assert resample_pos_embed(pos, (14, 14)) is pos
    with pytest.raises(ValueError, match='pos_interpolation'): vit_tiny(pos_interpolation='nearest')


# ---------------------------------------------------------------- pieces

def test_patch_embed_is_linear_on_patches():
    pe = PatchEmbed(32, 4, 3, 16)
    x = torch.randn(2, 3, 32, 32)
    ref = F.unfold(x, 4, stride=4).transpose(1, 2) @ pe.proj.weight.reshape(16, -1).T + pe.proj.bias
    assert torch.allclose(pe(x), ref, atol=1e-5)
    with pytest.raises(ValueError, match='at least 4 px'): pe(torch.randn(1, 3, 2, 2))


def test_sdpa_equals_explicit_and_rows_sum_to_one():
    torch.manual_seed(0)
    attn = Attention(48, num_heads=3).eval()
    x = torch.randn(3, 17, 48)
    fast = attn(x)
    slow, A = attn(x, return_attention=True)
    assert A.shape == (3, 3, 17, 17)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert torch.allclose(A.sum(-1), torch.ones(3, 3, 17), atol=1e-5)
    attn.fused_attn = False
    assert torch.allclose(attn(x), fast, atol=1e-5)
    with pytest.raises(ValueError, match='divisible'): Attention(50, num_heads=3)


def test_block_and_drop_path():
    blk = Block(48, 3, drop_path=0.5)
    x = torch.randn(4, 9, 48)
    blk.eval()
    assert torch.equal(blk(x), blk(x))
    assert torch.allclose(blk(x), blk(x, return_attention=True)[0], atol=1e-5)
    blk.train()
    torch.manual_seed(0); a = blk(x)
    torch.manual_seed(1); b = blk(x)
    assert not torch.allclose(a, b)   # stochastic depth is active in training


def test_model_shapes_and_api():
    m = vit_tiny(16, depth=2).eval()
    assert m.embed_dim == m.num_features == 192 and isinstance(m.head, nn.Identity)
    x = torch.randn(2, 3, 224, 224)
    assert m(x).shape == (2, 192)
    assert m.forward_features(x).shape == (2, 197, 192)
    assert torch.equal(m.forward_head(m.forward_features(x)), m(x))
    for size in [(96, 96), (32, 48), (224, 160)]:
        h, w = size[0] // 16, size[1] // 16
        xs = torch.randn(2, 3, *size)
        assert m(xs).shape == (2, 192)
        A = m.get_last_selfattention(xs)
        assert A.shape == (2, 3, 1 + h * w, 1 + h * w)
        assert torch.allclose(A.sum(-1), torch.ones(A.shape[:-1]), atol=1e-5)
        maps = m.cls_attention_maps(xs)
        assert maps.shape == (2, 3, h, w)
        assert torch.allclose(maps.flatten(2), A[:, :, 0, 1:])
    layers = m.get_intermediate_layers(x, n=2)
    assert len(layers) == 2 and all(t.shape == (2, 197, 192) for t in layers)
    assert torch.allclose(layers[-1], m.forward_features(x), atol=1e-6)
    clf = vit_tiny(4, img_size=32, depth=1, num_classes=10)
    assert isinstance(clf.head, nn.Linear) and clf(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert clf.forward_head(clf.forward_features(torch.randn(2, 3, 32, 32)), pre_logits=True).shape == (2, 192)
    assert {'pos_embed', 'cls_token'} == m.no_weight_decay()


def test_factory_sizes_and_init():
    n = lambda f: sum(p.numel() for p in f.parameters())
    assert round(n(vit_small()) / 1e6, 1) == 21.7
    assert round(n(vit_base(8, depth=1)) / 1e6, 1) > 7
    m = vit_small(8, depth=1, embed_dim=96, num_heads=3, drop_path_rate=0.1, img_size=96)
    assert m.patch_embed.grid_size == (12, 12) and m.pos_embed.shape == (1, 145, 96)
    assert abs(m.pos_embed.std().item() - 0.02) < 0.004
    assert abs(m.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.004 and m.blocks[0].attn.qkv.bias.abs().sum() == 0


# ---------------------------------------------------------------- checkpoints

@pytest.fixture(scope='module')
def src_vit():
    torch.manual_seed(3)
    return vit_tiny(16, depth=3).eval()


def _dino_layout(model: nn.Module, prefix: str) -> dict:
    head = nn.Sequential(nn.Linear(192, 64), nn.GELU(), nn.Linear(64, 128))
    sd = {f'{prefix}backbone.{k}': v for k, v in model.state_dict().items()}
    sd.update({f'{prefix}head.{k}': v for k, v in head.state_dict().items()})
    return sd


def test_load_official_dino_layout(tmp_path, src_vit, capsys):
    x = torch.randn(2, 3, 224, 224)
    ckpt = {'teacher': _dino_layout(src_vit, 'module.'), 'student': {}, 'epoch': 3, 'args': argparse.Namespace(arch='vit_tiny')}
    torch.save(ckpt, tmp_path / 'checkpoint.pth')
    dst = vit_tiny(16, depth=3).eval()
    rep = load_pretrained(dst, tmp_path / 'checkpoint.pth')
    assert torch.allclose(dst(x), src_vit(x), atol=1e-6)
    assert "teacher" in rep.source and 'module.backbone.' in rep.source
    assert sorted(rep.ignored) == ['head.0.bias', 'head.0.weight', 'head.2.bias', 'head.2.weight'] and rep.missing == []
    assert len(rep.loaded) == len(dst.state_dict())
    assert 'ignored 4' in capsys.readouterr().out
    # plain `backbone.` prefix, saved as a bare state dict
    torch.save(_dino_layout(src_vit, ''), tmp_path / 'backbone.pth')
    dst2 = vit_tiny(16, depth=3).eval()
    load_pretrained(dst2, tmp_path / 'backbone.pth', verbose=False)
    assert torch.allclose(dst2(x), src_vit(x), atol=1e-6)
    # student on request
    with pytest.raises(CheckpointError, match='holds no tensors'): load_pretrained(dst2, ckpt, checkpoint_key='student')


def test_load_timm_checkpoint_with_classifier(tmp_path, src_vit):
    theirs = timm.create_model('vit_tiny_patch16_224', depth=3, pretrained=False, num_classes=1000).eval()   # 224 px grid
    torch.save(theirs.state_dict(), tmp_path / 'timm.pth')
    ours = vit_tiny(16, depth=3).eval()                                 # no head: the classifier is ignored
    rep = load_pretrained(ours, tmp_path / 'timm.pth', verbose=False)
    assert rep.ignored == ['head.weight', 'head.bias']
    x = torch.randn(1, 3, 224, 224)
    assert torch.allclose(ours(x), theirs.forward_head(theirs.forward_features(x), pre_logits=True), atol=1e-5)
    ours_clf = vit_tiny(16, depth=3, num_classes=1000).eval()           # same head: loaded
    load_pretrained(ours_clf, tmp_path / 'timm.pth', verbose=False)
    assert torch.allclose(ours_clf(x), theirs(x), atol=1e-5)
    ours10 = vit_tiny(16, depth=3, num_classes=10)                      # other head: kept, reported
    rep = load_pretrained(ours10, tmp_path / 'timm.pth', verbose=False)
    assert rep.ignored == ['head.weight', 'head.bias']
    # a model with a head loading a backbone-only file: the head is reported missing, left initialised
    rep = load_pretrained(ours10, src_vit.state_dict(), verbose=False)
    assert rep.missing == ['head.weight', 'head.bias']


def test_pos_embed_resized_on_load(src_vit):
    dst = vit_tiny(16, depth=3, img_size=96).eval()
    rep = load_pretrained(dst, src_vit.state_dict(), verbose=False)
    assert rep.resized == ['pos_embed 14x14->6x6']
    x = torch.randn(1, 3, 96, 96)
    assert torch.allclose(dst(x), src_vit(x), atol=1e-5)   # same resampler, applied once at load instead of every forward


def test_wrong_architecture_refused(tmp_path, src_vit):
    torch.save({'teacher': _dino_layout(src_vit, 'module.')}, tmp_path / 'ckpt.pth')
    deeper = vit_tiny(16, depth=4)
    before = {k: v.clone() for k, v in deeper.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r'checkpoint is ViT \(embed_dim=192, depth=3.*model is ViT \(embed_dim=192, depth=4'):
        load_pretrained(deeper, tmp_path / 'ckpt.pth')
    assert all(torch.equal(before[k], v) for k, v in deeper.state_dict().items())   # nothing loaded half-way
    with pytest.raises(CheckpointMismatchError, match='embed_dim=384'): load_pretrained(vit_small(16, depth=3), tmp_path / 'ckpt.pth')
    with pytest.raises(CheckpointMismatchError, match='patch_size=8'): load_pretrained(vit_tiny(8, depth=3), tmp_path / 'ckpt.pth')
    with pytest.raises(ValueError): load_pretrained(build_backbone('resnet18'), tmp_path / 'ckpt.pth')   # a ValueError subclass
    with pytest.raises(CheckpointMismatchError): load_pretrained(vit_tiny(16, depth=3), build_backbone('resnet18').state_dict())


class _Opaque:
    "A pickled Python object that `weights_only=True` refuses."


def test_bad_files_refused(tmp_path):
    m = vit_tiny(16, depth=1)
    with pytest.raises(FileNotFoundError, match='No checkpoint file'): load_pretrained(m, tmp_path / 'nope.pth')
    (tmp_path / 'junk.pth').write_bytes(b'definitely not a checkpoint' * 20)
    with pytest.raises(CheckpointError, match='not a PyTorch checkpoint'): load_pretrained(m, tmp_path / 'junk.pth')
    torch.save({'model': m.state_dict(), 'extra': _Opaque()}, tmp_path / 'pickled.pth')
    with pytest.raises(CheckpointError, match='weights_only=False'): load_pretrained(m, tmp_path / 'pickled.pth')
    load_pretrained(m, tmp_path / 'pickled.pth', weights_only=False, verbose=False)   # trusted: fine
    torch.save({'epoch': 3, 'lr': 0.1}, tmp_path / 'nostate.pth')
    with pytest.raises(CheckpointError, match='No state dict'): load_pretrained(m, tmp_path / 'nostate.pth')


def test_safetensors(tmp_path, src_vit):
    from safetensors.torch import save_file
    save_file(src_vit.state_dict(), str(tmp_path / 'w.safetensors'))
    dst = vit_tiny(16, depth=3).eval()
    load_pretrained(dst, tmp_path / 'w.safetensors', verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(dst.state_dict().values(), src_vit.state_dict().values()))


# ---------------------------------------------------------------- backbones

def test_resnet18_backbone():
    r = build_backbone('resnet18').eval()
    assert r.embed_dim == 512
    assert r(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    rs = build_backbone('resnet18', small_input=True).eval()
    assert rs.embed_dim == 512 and rs(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    assert rs.forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)
    assert r.forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (1, 1)


def test_build_backbone_vit_and_errors():
    v = build_backbone('vit_small', patch_size=8, img_size=32, depth=1)
    assert isinstance(v, VisionTransformer) and v.embed_dim == 384 and v.patch_size == 8
    with pytest.raises(ValueError, match='Unknown backbone'): build_backbone('resnet_nineteen')
    with pytest.raises(ValueError, match='small_input'): build_backbone('vit_tiny', small_input=True)
    with pytest.raises(ValueError, match='small_input'): build_backbone('vit_tiny_patch16_224', small_input=True, depth=1)


# ---------------------------------------------------------------- convolutional stem

@pytest.mark.parametrize('p', [1, 2, 4, 8])
def test_conv_stem_shape_and_stride(p):
    torch.manual_seed(0)
    s = ConvStem(img_size=32, patch_size=p, in_chans=3, embed_dim=16, widths=(8, 8, 8)).eval()
    assert s.patch_size == (p, p) and s.grid_size == (32 // p, 32 // p) and s.num_patches == (32 // p) ** 2
    assert sum(isinstance(m, nn.MaxPool2d) for m in s.modules()) == int(math.log2(p))
    x = torch.randn(2, 3, 32, 48)
    out = s(x)
    assert out.shape == (2, (32 // p) * (48 // p), 16) and out.is_contiguous()
    with torch.no_grad(): fmap = s.proj(s.stem(x))                      # (B, D, h, w): total stride p
    assert fmap.shape[-2:] == (32 // p, 48 // p)
    assert torch.allclose(out, fmap.flatten(2).transpose(1, 2), atol=1e-6)   # tokens in row-major order
    with pytest.raises(ValueError, match=f'at least {p} px'): s(torch.randn(1, 3, 32, p - 1) if p > 1 else torch.randn(3, 32, 32))


def test_conv_stem_bad_patch_size():
    for p in (3, 6, 0):
        with pytest.raises(ValueError, match='power of two'): ConvStem(patch_size=p)
    with pytest.raises(ValueError, match=r'needs 4 max-pools.*at most patch_size=8'): ConvStem(patch_size=16, widths=(32, 64, 128))
    with pytest.raises(ValueError, match='at most patch_size=2'): ConvStem(patch_size=4, widths=(16,))
    assert ConvStem(patch_size=16, widths=(8, 8, 8, 8)).grid_size == (2, 2)
    with pytest.raises(ValueError, match='power of two'): vit_conv(patch_size=3)
    with pytest.raises(ValueError, match='at most patch_size=8'): build_backbone('vit_conv', patch_size=16)
    with pytest.raises(ValueError, match="stem='cnn'"): VisionTransformer(stem='cnn')


def test_vit_conv_shapes_and_attention():
    torch.manual_seed(0)
    for m in (vit_conv().eval(), build_backbone('vit_conv').eval()):
        assert isinstance(m, VisionTransformer) and isinstance(m.patch_embed, ConvStem) and m.stem == 'conv'
        assert m.embed_dim == m.num_features == 128 == VIT_CONV_DEFAULTS['embed_dim'] and m.patch_size == 4
        assert len(m.blocks) == VIT_CONV_DEFAULTS['depth'] == 1 and m.block == 'class' and m.num_heads == 4
        assert m.pos_embed.shape == (1, 65, 128)
        for px, g in ((32, 8), (16, 4)):                                 # global and local crops
            x = torch.randn(2, 3, px, px)
            assert m(x).shape == (2, 128)
            assert m.forward_features(x).shape == (2, 1 + g * g, 128)
            assert m.interpolate_pos_encoding(g, g).shape == (1, 1 + g * g, 128)
            A = m.get_last_selfattention(x)
            assert A.shape == (2, 4, 1, 1 + g * g)                        # class attention: the class token's row only
            assert torch.allclose(A.sum(-1), torch.ones(A.shape[:-1]), atol=1e-5)
            maps = m.cls_attention_maps(x)
            assert maps.shape == (2, 4, g, g)
            assert torch.allclose(maps.sum((-2, -1)) + A[:, :, 0, 0], torch.ones(2, 4), atol=1e-5)
            layers = m.get_intermediate_layers(x, n=2)                   # asks for 2; the default has one block
            assert len(layers) == len(m.blocks) and all(t.shape == (2, 1 + g * g, 128) for t in layers)
            assert torch.allclose(layers[-1], m.forward_features(x), atol=1e-6)
    small = build_backbone('vit_conv', embed_dim=64, depth=1, num_heads=2, stem_widths=(16, 32))
    assert small.embed_dim == 64 and small(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    assert [m.out_channels for m in small.patch_embed.modules() if isinstance(m, nn.Conv2d)] == [16, 32, 64]
    assert vit_conv(num_classes=10)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="'vit_conv'"): build_backbone('vit_cnov')   # listed among the names
    with pytest.raises(ValueError, match='small_input'): build_backbone('vit_conv', small_input=True)


def test_vit_conv_state_dict_round_trip():
    torch.manual_seed(0)
    src = vit_conv().train()
    with torch.no_grad():
        for _ in range(2): src(torch.randn(8, 3, 32, 32))                # BatchNorm running statistics move off their init
    src.eval()
    sd = src.state_dict()
    assert 'patch_embed.stem.1.running_mean' in sd and 'patch_embed.proj.weight' in sd
    torch.manual_seed(1)
    dst = vit_conv()
    dst.load_state_dict(sd, strict=True)
    dst.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad(): assert torch.equal(dst(x), src(x)) and torch.equal(dst.forward_features(x[:, :, :16, :16]), src.forward_features(x[:, :, :16, :16]))
    assert 'conv stem widths (32, 64, 128)' in describe_state_dict(sd)
    with pytest.raises(CheckpointMismatchError, match='conv stem widths'): load_pretrained(vit_tiny(4, img_size=32, depth=2), sd)


def test_patch_stem_keys_are_timms():
    import inspect
    assert list(inspect.signature(VisionTransformer).parameters)[-3:] == ['stem', 'stem_widths', 'block']
    theirs = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=0)
    ref = {k: v.shape for k, v in theirs.state_dict().items()}
    for ours in (vit_tiny(16), VisionTransformer(embed_dim=192, depth=12, num_heads=3, stem='patch')):
        assert ours.stem == 'patch' and isinstance(ours.patch_embed, PatchEmbed)
        assert {k: v.shape for k, v in ours.state_dict().items()} == ref


def test_conv_stem_gradients_and_init():
    torch.manual_seed(0)
    m = vit_conv().train()
    convs = [c for c in m.patch_embed.modules() if isinstance(c, nn.Conv2d)]
    for c in convs[:-1]:                                  # timm's ResNet init survives VisionTransformer's _init_weights
        fan_out = c.out_channels * c.kernel_size[0] * c.kernel_size[1]
        assert c.bias is None and abs(c.weight.std().item() / math.sqrt(2 / fan_out) - 1) < 0.1
    proj = m.patch_embed.proj
    assert abs(proj.weight.std().item() / math.sqrt(2 / proj.out_channels) - 1) < 0.1 and proj.bias.abs().sum() == 0
    assert all(bn.weight.eq(1).all() and bn.bias.eq(0).all() for bn in m.patch_embed.modules() if isinstance(bn, nn.BatchNorm2d))
    m(torch.randn(4, 3, 32, 32)).pow(2).mean().backward()
    g = m.patch_embed.stem[0].weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
