import os
import numpy as np, pytest, torch
from dino_course import core


def test_get_device_explicit_and_env(monkeypatch):
    assert core.get_device('cpu') == torch.device('cpu')
    monkeypatch.setenv('DINO_COURSE_DEVICE', 'cpu')
    assert core.get_device() == torch.device('cpu')


def test_seed_everything_reproducible():
    core.seed_everything(7); a = (torch.rand(3), np.random.rand(3))
    core.seed_everything(7); b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    core.seed_everything(8); assert not torch.equal(a[0], torch.rand(3))


def test_scale_setting(monkeypatch):
    monkeypatch.delenv('DINO_COURSE_SCALE', raising=False)
    assert core.get_scale() == 'cpu' and core.by_scale(cpu=1, full=2) == 1
    monkeypatch.setenv('DINO_COURSE_SCALE', 'FULL')
    assert core.get_scale() == 'full' and core.by_scale(cpu=1, full=2) == 2
    monkeypatch.setenv('DINO_COURSE_SCALE', 'big')
    with pytest.raises(ValueError, match='DINO_COURSE_SCALE'): core.get_scale()


def test_quiet_progress(monkeypatch):
    monkeypatch.setenv('IN_TEST', '1')
    assert core.is_quiet() and core.progress(range(3)).disable
    monkeypatch.delenv('IN_TEST'); monkeypatch.setenv('DINO_COURSE_QUIET', '0')
    assert not core.is_quiet()


def test_to_hwc_uint8():
    x = torch.zeros(3, 5, 7); x[0] = 1
    out = core.to_hwc_uint8(x)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8 and out[..., 0].min() == 255 and out[..., 1].max() == 0
    assert core.to_hwc_uint8(np.full((4, 4, 3), 0.5)).max() == 128


def test_show_images_with_masks():
    import matplotlib; matplotlib.use('agg')
    imgs = np.zeros((5, 8, 8, 3), np.uint8); m = np.zeros((5, 8, 8), bool); m[:, 2:5, 2:5] = True
    fig = core.show_images(imgs, m, titles=list('abcde'), ncols=3)
    assert len(fig.axes) == 6 and fig.axes[0].get_title() == 'a'


def test_amp_dtype_choices_and_env(monkeypatch):
    monkeypatch.delenv('DINO_COURSE_AMP', raising=False)
    assert core.amp_dtype('cuda') is torch.bfloat16 and core.amp_dtype('cuda', 'fp16') is torch.float16
    assert core.amp_dtype('cpu', 'none') is None and core.amp_dtype('cpu', 'bf16') is torch.bfloat16
    assert core.amp_dtype('mps') is None                                  # auto: bf16 only on CUDA and native-bf16 CPUs
    assert core.amp_dtype('cpu') is (torch.bfloat16 if core.cpu_has_native_bf16() else None)
    monkeypatch.setenv('DINO_COURSE_AMP', 'none')                          # the environment switches 'auto' off ...
    assert core.amp_dtype('cuda') is None and core.amp_dtype('cpu', 'auto') is None
    assert core.amp_dtype('cpu', 'bf16') is torch.bfloat16                # ... but not an explicit choice
    with pytest.raises(ValueError, match='amp must be one of'): core.amp_dtype('cpu', 'half')


def test_native_bf16_follows_torch_cpu_checks(monkeypatch):
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: False, raising=False)
    assert not core.cpu_has_native_bf16()
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: True, raising=False)
    assert core.cpu_has_native_bf16()
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: 1 / 0, raising=False)   # a broken check counts as no
    assert not core.cpu_has_native_bf16()
