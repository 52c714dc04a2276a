import math
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from dino_course.augment import (IMAGENET_MEAN, IMAGENET_STD, BatchMultiCrop, BatchTwoView, MultiCropAugmentation,
                                 TwoViewAugmentation, adjust_hue, benchmark_augment, blur_kernel_size, color_jitter,
                                 denormalize, eval_transform, gaussian_blur, hsv_to_rgb, resized_crops, rgb_to_hsv,
                                 sample_crop_boxes, shuffle_channels, solarize, to_normalized)
from dino_course.data import make_shapes

EPS = 1e-4


@pytest.fixture(scope='module')
def shapes():
    return torch.from_numpy(make_shapes(16, size=64, seed=0)[0]).permute(0, 3, 1, 2).contiguous()   # (16,3,64,64) uint8


def _check_boxes(boxes, H, W, scale, ratio):
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    frac, aspect = w * h / (H * W), w / h
    assert (frac >= scale[0] - EPS).all() and (frac <= scale[1] + EPS).all(), (frac.min(), frac.max())
    assert (aspect >= ratio[0] - EPS).all() and (aspect <= ratio[1] + EPS).all(), (aspect.min(), aspect.max())
    assert (boxes[:, 0] >= -EPS).all() and (boxes[:, 1] >= -EPS).all()
    assert (boxes[:, 2] <= W + EPS).all() and (boxes[:, 3] <= H + EPS).all()
    return frac, aspect


@pytest.mark.parametrize('H,W,scale,ratio', [(64, 64, (0.05, 0.4), (3 / 4, 4 / 3)),   # DINO local
                                             (64, 64, (0.4, 1.0), (3 / 4, 4 / 3)),    # DINO global
                                             (224, 224, (0.08, 1.0), (3 / 4, 4 / 3)), # BYOL / SimCLR
                                             (48, 80, (0.1, 0.6), (0.5, 2.0))])       # non-square image
def test_crop_boxes_follow_scale_and_ratio(H, W, scale, ratio):
    boxes = sample_crop_boxes(20_000, H, W, scale, ratio, generator=torch.Generator().manual_seed(0))
    assert boxes.shape == (20_000, 4) and boxes.dtype == torch.float32
    frac, aspect = _check_boxes(boxes, H, W, scale, ratio)
    # the ranges are used, not just respected: both ends are reached
    assert frac.min() < scale[0] + 0.05 * (scale[1] - scale[0]) and frac.max() > scale[1] - 0.1 * (scale[1] - scale[0])
    assert aspect.log().min() < math.log(ratio[0]) * 0.9 and aspect.log().max() > math.log(ratio[1]) * 0.9


def test_crop_boxes_distribution_like_torchvision():
    # when every first try fits, area is uniform in scale and log-aspect uniform in log ratio
    boxes = sample_crop_boxes(50_000, 64, 64, (0.05, 0.4), generator=torch.Generator().manual_seed(1))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert abs((w * h / 64 ** 2).mean().item() - 0.225) < 0.003
    assert abs((w / h).log().mean().item()) < 0.005
    # crop centres cover the image: mean centre near the middle
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    assert abs(cx.mean().item() - 32) < 0.3


def test_crop_boxes_fallback_center_crop():
    # no try can fit: torchvision falls back to a centred crop of the whole image at the nearest allowed aspect
    b = sample_crop_boxes(5, 60, 60, scale=(2.0, 3.0), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(b, torch.tensor([[0., 0., 60., 60.]]).expand(5, 4))
    b = sample_crop_boxes(3, 60, 60, scale=(0.5, 1.0), ratio=(5.0, 6.0), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(b, torch.tensor([[0., 24., 60., 36.]]).expand(3, 4))    # w = 60, h = 60 / 5, centred
    b = sample_crop_boxes(2, 100, 20, scale=(2.0, 3.0), ratio=(0.5, 2.0))               # 1:5 image, aspect >= 0.5
    torch.testing.assert_close(b, torch.tensor([[0., 30., 20., 70.]]).expand(2, 4))


def test_crop_boxes_reproducible_and_validated():
    a = sample_crop_boxes(64, 64, 64, generator=torch.Generator().manual_seed(3))
    b = sample_crop_boxes(64, 64, 64, generator=torch.Generator().manual_seed(3))
    c = sample_crop_boxes(64, 64, 64, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match='scale'): sample_crop_boxes(4, 64, 64, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match='ratio'): sample_crop_boxes(4, 64, 64, ratio=(0, 1))


def test_resized_crops(shapes):
    x = shapes[:3].float() / 255
    torch.testing.assert_close(resized_crops(x, torch.tensor([[0., 0., 64., 64.]] * 3), 64), x, atol=1e-5, rtol=0)
    # a box from image 2 only, upsampled 2x from a 16 px box: close to torchvision's bilinear resize of that crop
    out = resized_crops(x, torch.tensor([[8., 16., 24., 32.]]), 32, batch_index=torch.tensor([2]))
    ref = TF.resized_crop(x[2], 16, 8, 16, 16, [32, 32], antialias=False)
    assert out.shape == (1, 3, 32, 32) and (out[0] - ref).abs().mean() < 0.01


def test_color_ops_match_torchvision(shapes):
    x = torch.cat([shapes[:4].float() / 255, torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))])
    f = torch.linspace(0.3, 1.7, 8); hue = torch.linspace(-0.5, 0.5, 8)
    for i in range(8):
        torch.testing.assert_close(color_jitter(x, brightness=f)[i], TF.adjust_brightness(x[i], f[i].item()), atol=EPS, rtol=0)
        torch.testing.assert_close(color_jitter(x, contrast=f)[i], TF.adjust_contrast(x[i], f[i].item()), atol=EPS, rtol=0)
        torch.testing.assert_close(color_jitter(x, saturation=f)[i], TF.adjust_saturation(x[i], f[i].item()), atol=EPS, rtol=0)
        torch.testing.assert_close(adjust_hue(x, hue)[i], TF.adjust_hue(x[i], hue[i].item()), atol=1e-5, rtol=0)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5, rtol=0)
    h = rgb_to_hsv(x)[:, 0]
    assert (h >= 0).all() and (h < 1).all()
    # order matters and is honoured: brightness then contrast differs from contrast then brightness
    a = color_jitter(x, brightness=f, contrast=f, order=(0, 1)); b = color_jitter(x, brightness=f, contrast=f, order=(1, 0))
    assert not torch.allclose(a, b)


def test_blur_solarize_shuffle(shapes):
    x = shapes[:4].float() / 255
    sigma = torch.tensor([0.1, 0.5, 1.2, 2.0])
    k = blur_kernel_size(2.0, 64)
    assert k == 13 and blur_kernel_size(2.0, 8) == 7 and blur_kernel_size(0.1, 64) == 3
    out = gaussian_blur(x, sigma, k)
    for i in range(4):
        torch.testing.assert_close(out[i], TF.gaussian_blur(x[i], [k, k], [sigma[i].item()] * 2), atol=1e-5, rtol=0)
    sharp = lambda t: (t[..., 1:] - t[..., :-1]).pow(2).mean().item()      # gradient energy
    assert sharp(gaussian_blur(x, torch.full((4,), 2.0), k)) < 0.6 * sharp(gaussian_blur(x, torch.full((4,), 0.1), k))
    torch.testing.assert_close(gaussian_blur(x, torch.full((4,), 0.1), k), x, atol=1e-4, rtol=0)   # tiny sigma: identity
    torch.testing.assert_close(solarize(x), TF.solarize(x, 0.5))
    s = shuffle_channels(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(s.sort(1).values, x.sort(1).values)


def test_batch_multicrop_shapes_range_device(shapes):
    aug = BatchMultiCrop(global_size=48, local_size=24, n_local=5)
    views = aug(shapes, generator=torch.Generator().manual_seed(0))
    assert len(views) == 7
    assert [tuple(v.shape) for v in views] == [(16, 3, 48, 48)] * 2 + [(16, 3, 24, 24)] * 5
    lo = to_normalized(torch.zeros(1, 3, 1, 1)); hi = to_normalized(torch.ones(1, 3, 1, 1))
    for v in views:
        assert v.dtype == torch.float32 and v.device == shapes.device and torch.isfinite(v).all()
        assert (v >= lo - EPS).all() and (v <= hi + EPS).all()
    assert len(BatchMultiCrop(32, 16, n_local=0)(shapes)) == 2


def test_batch_multicrop_reproducible(shapes):
    aug = BatchMultiCrop(32, 16, n_local=3, p_channel_shuffle=0.5)
    a = aug(shapes, generator=torch.Generator().manual_seed(7))
    b = aug(shapes, generator=torch.Generator().manual_seed(7))
    c = aug(shapes, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    # uint8, float [0, 1] and channels-last NumPy inputs are the same images
    d = aug(shapes.float() / 255, generator=torch.Generator().manual_seed(7))
    e = aug(shapes.permute(0, 2, 3, 1).numpy(), generator=torch.Generator().manual_seed(7))
    for x, y, z in zip(a, d, e):
        torch.testing.assert_close(x, y); torch.testing.assert_close(x, z)


def _plain(**kw):
    "Everything off except what `kw` turns on; whole-image crops."
    base = dict(global_size=64, local_size=32, n_local=2, global_scale=(1.0, 1.0), local_scale=(1.0, 1.0), ratio=(1.0, 1.0),
                p_jitter=0.0, p_gray=0.0, blur=(0.0, 0.0, 0.0), p_solarize=0.0, p_flip=0.0)
    return BatchMultiCrop(**{**base, **kw})


def test_batch_multicrop_each_step(shapes):
    x = shapes.float() / 255
    v = _plain()(shapes)
    torch.testing.assert_close(v[0], to_normalized(x), atol=1e-4, rtol=0)                # identity crop, nothing else
    torch.testing.assert_close(v[1], to_normalized(x), atol=1e-4, rtol=0)
    # local: the whole image shrunk 2x; roi_align's 2x2 average and torchvision's antialias filter differ at edges only
    assert (denormalize(v[2]) - TF.resize(x, [32, 32], antialias=True)).abs().mean() < 0.02
    torch.testing.assert_close(_plain(p_flip=1.0)(shapes)[0], to_normalized(x.flip(-1)), atol=1e-4, rtol=0)
    g = denormalize(_plain(p_gray=1.0)(shapes)[0])
    torch.testing.assert_close(g, TF.rgb_to_grayscale(x, 3), atol=5e-4, rtol=0)
    s = _plain(p_solarize=1.0)(shapes)
    torch.testing.assert_close(s[0], to_normalized(x), atol=1e-4, rtol=0)                # global 1 never solarized
    torch.testing.assert_close(s[1], to_normalized(solarize(x)), atol=1e-4, rtol=0)      # global 2 always
    b = _plain(blur=(1.0, 0.0, 0.0))(shapes)
    assert (denormalize(b[0]) - x).abs().mean() > 1e-3 and torch.allclose(b[1], to_normalized(x), atol=1e-4)
    j = _plain(p_jitter=1.0)(shapes)[0]
    assert (denormalize(j) - x).abs().mean() > 0.01
    c = denormalize(_plain(p_channel_shuffle=1.0)(shapes)[0])
    torch.testing.assert_close(c.sort(1).values, x.sort(1).values, atol=5e-4, rtol=0)


def test_batch_multicrop_probabilities():
    imgs = torch.from_numpy(make_shapes(1000, size=32, seed=1)[0]).permute(0, 3, 1, 2)
    aug = BatchMultiCrop(32, 16, n_local=1, p_jitter=0.0, blur=(0.0, 0.0, 0.0), p_gray=0.2, p_solarize=0.0)
    views = aug(imgs, generator=torch.Generator().manual_seed(0))
    for v in views:
        x = denormalize(v)
        gray = ((x[:, 0] - x[:, 1]).abs().amax((1, 2)) < 1e-3).float().mean().item()
        assert abs(gray - 0.2) < 0.04, gray


def test_batch_errors(shapes):
    with pytest.raises(ValueError, match='batch of RGB images'): BatchMultiCrop()(shapes[0])
    with pytest.raises(ValueError, match='batch of RGB images'): BatchTwoView()(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match='uint8 or float'): BatchMultiCrop()(shapes.long())
    with pytest.raises(ValueError, match='blur'): BatchMultiCrop(blur=(1.0, 0.1))
    with pytest.raises(ValueError, match='hue'): BatchTwoView(jitter=(0.4, 0.4, 0.2, 0.7))


def test_batch_two_view(shapes):
    views = BatchTwoView(size=40)(shapes, generator=torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(16, 3, 40, 40)] * 2
    assert not torch.equal(views[0], views[1])
    b = BatchTwoView(size=64, scale=(1.0, 1.0), ratio=(1.0, 1.0), p_jitter=0.0, p_gray=0.0, p_flip=0.0,
                     blur=(0.0, 0.0), p_solarize=(0.0, 1.0))(shapes)
    torch.testing.assert_close(b[1], to_normalized(solarize(shapes.float() / 255)), atol=1e-4, rtol=0)


def test_per_image_augmentations(shapes):
    aug = MultiCropAugmentation(global_size=48, local_size=24, n_local=4)
    for img in (shapes[0], Image.fromarray(shapes[0].permute(1, 2, 0).numpy())):
        crops = aug(img)
        assert [tuple(c.shape) for c in crops] == [(3, 48, 48)] * 2 + [(3, 24, 24)] * 4
        assert all(type(c) is torch.Tensor and c.dtype == torch.float32 for c in crops)
    assert [tuple(v.shape) for v in TwoViewAugmentation(size=40)(shapes[0])] == [(3, 40, 40)] * 2
    e = eval_transform(56)(shapes[0])
    assert e.shape == (3, 56, 56)
    torch.testing.assert_close(eval_transform(64, resize=64)(shapes[0]), to_normalized(shapes[0]), atol=1e-5, rtol=0)


def test_benchmark_runs():
    r = benchmark_augment(n=8, repeats=1)
    assert set(r) == {'per_image', 'batched', 'ratio', 'per_image_cpu', 'batched_cpu', 'ratio_cpu'}
    assert r['per_image'] > 0 and r['batched'] > 0 and r['per_image_cpu'] > 0
    assert r['ratio'] == pytest.approx(r['batched'] / r['per_image'])
    assert r['ratio_cpu'] == pytest.approx(r['batched_cpu'] / r['per_image_cpu'])
