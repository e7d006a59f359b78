"Tests of transrec.encoders: freezing, block-wise text encoding, image encoder, ItemContent and the frozen-prefix cache."
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import logging
import numpy as np
import pytest
import torch
from PIL import Image
from transrec.core import ModelConfig, seed_everything
from transrec.data import load_dataset
from transrec.encoders import (text_model_path, TextEncoder, ImageEncoder, ItemTower, ItemContent, make_content,
                               count_parameters, dataset_item_key, dataset_content_key, load_image_weights)
from transrec.data import tiny_mom

torch.set_num_threads(min(2, torch.get_num_threads()))
CFG = ModelConfig(dim=16, text_trainable_blocks=2, image_size=32, text_max_tokens=16)


@pytest.fixture(scope='module')
def ds(tmp_path_factory):
    return load_dataset(tiny_mom(tmp_path_factory.mktemp('enc')/'tiny'))

@pytest.fixture(scope='module')
def text_enc():
    return TextEncoder(CFG).eval()

@pytest.fixture(scope='module')
def image_enc():
    return ImageEncoder(CFG).eval()

def text_items(ds): return torch.as_tensor(np.nonzero(ds.modality == 0)[0])
def image_items(ds): return torch.as_tensor(np.nonzero(ds.modality == 1)[0])


def test_text_model_path(tmp_path):
    assert (__import__('pathlib').Path(text_model_path('minilm'))/'config.json').exists()
    assert text_model_path('org/some-model') == 'org/some-model'
    with pytest.raises(ValueError, match='no such folder'): text_model_path('/definitely/not/here')
    with pytest.raises(ValueError, match='no config.json'): text_model_path(str(tmp_path))
    with pytest.raises(ValueError, match='could not load text model'): TextEncoder(CFG.replace(text_model='nonexistent-org/nonexistent-model'))


def test_text_freezing_counts(text_enc):
    bb = text_enc.backbone
    layer = sum(p.numel() for p in bb.encoder.layer[0].parameters())
    pc = count_parameters(bb)
    assert pc['trainable'] == 2 * layer                       # top 2 of 6 MiniLM blocks (pooler dropped: attention pooling)
    assert pc['total'] == pc['trainable'] + pc['frozen'] and pc['total'] > 22_000_000
    assert all(not p.requires_grad for p in bb.embeddings.parameters())
    assert all(p.requires_grad for p in bb.encoder.layer[5].parameters())
    text_enc.train()
    try:
        assert not bb.embeddings.training and not bb.encoder.layer[3].training and bb.encoder.layer[4].training
    finally: text_enc.eval()
    with pytest.raises(ValueError, match='use 0..7'): TextEncoder(CFG.replace(text_trainable_blocks=8))


def test_text_blockwise_equals_hf_forward(ds, text_enc):
    content = make_content(CFG, ds, prefix_cache=False)
    ids, mask = content.tokens(text_items(ds))
    with torch.no_grad():
        ref = text_enc.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        got = text_enc.run_blocks(text_enc.prefix(ids, mask), mask, text_enc.n_frozen, text_enc.n_blocks)
    m = mask[..., None].float()
    torch.testing.assert_close(got * m, ref * m, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('pooling', ['cls', 'mean', 'attention'])
def test_text_pooling_and_grads(ds, pooling):
    cfg = CFG.replace(text_pooling=pooling, text_trainable_blocks=1)
    enc = TextEncoder(cfg).train()
    v = enc(text_items(ds)[:5], make_content(cfg, ds))
    assert v.shape == (5, cfg.dim) and torch.isfinite(v).all()
    v.pow(2).sum().backward()
    assert enc.backbone.encoder.layer[5].attention.self.query.weight.grad is not None
    assert enc.backbone.encoder.layer[4].attention.self.query.weight.grad is None
    if pooling == 'cls': assert enc.backbone.pooler.dense.weight.grad is not None   # the pooler trains with the top blocks
    else: assert enc.backbone.pooler is None


def test_mean_pooling_ignores_padding(ds):
    cfg = CFG.replace(text_pooling='mean', text_trainable_blocks=0)
    enc = TextEncoder(cfg).eval(); content = make_content(cfg, ds, prefix_cache=False)
    items = text_items(ds)
    lens = content.tokens(items)[1].sum(1)
    short = items[lens.argmin()].view(1)
    with torch.no_grad():       # alone (no padding) vs in a batch with a longer text (padded)
        torch.testing.assert_close(enc(short, content)[0], enc(items, content)[int(lens.argmin())], atol=1e-5, rtol=1e-4)


def test_image_encoder(tmp_path, image_enc):
    assert image_enc.weights_source == 'random-init'
    r = image_enc.resnet
    assert count_parameters(r)['trainable'] == sum(p.numel() for n in ('layer3', 'layer4') for p in getattr(r, n).parameters())
    image_enc.train()
    try: assert not r.bn1.training and not r.layer2.training and r.layer3.training
    finally: image_enc.eval()
    f = tmp_path/'w.pth'; torch.save(r.state_dict(), f)
    loaded = ImageEncoder(CFG.replace(image_weights=str(f)))
    assert loaded.weights_source == f'file:{f}'
    torch.testing.assert_close(loaded.resnet.layer1[0].conv1.weight, r.layer1[0].conv1.weight)
    with pytest.raises(ValueError, match='no such file'): ImageEncoder(CFG.replace(image_weights=str(tmp_path/'x.pth')))
    with pytest.raises(ValueError, match='does not fit'): ImageEncoder(CFG.replace(image_weights=str(f), image_model='resnet34'))
    torch.save({'something': 1}, tmp_path/'bad.pth')
    with pytest.raises(ValueError, match='does not fit'): ImageEncoder(CFG.replace(image_weights=str(tmp_path/'bad.pth')))
    all_frozen = ImageEncoder(CFG, trainable_blocks=0)
    assert count_parameters(all_frozen.resnet)['trainable'] == 0
    assert all_frozen.prefix(torch.zeros(2, 3, 32, 32)).shape == (2, 512)   # fully frozen: pooled features are cached
    with pytest.raises(ValueError, match='0..5'): ImageEncoder(CFG.replace(image_trainable_blocks=6))


def test_pixels_resize_crop_normalise(tmp_path):
    d = load_dataset(tiny_mom(tmp_path/'wide', n_text=5, n_image=3, n_users=2, image_wh=(40, 20)))
    c = make_content(CFG, d)
    px = c.pixels(image_items(d))
    assert px.shape == (3, 3, 32, 32)
    img = np.asarray(d.load_image(int(image_items(d)[0])).resize((64, 32), Image.BILINEAR))[:, 16:48]   # centre crop
    x = (torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255 - torch.tensor(CFG.image_mean)[:, None, None]) / torch.tensor(CFG.image_std)[:, None, None]
    torch.testing.assert_close(px[0], x)
    with pytest.raises(ValueError, match='are not image items'): c.pixels(text_items(d)[:1])


def test_cache_on_off_same_vectors_and_invalidation(ds, text_enc, image_enc):
    on, off = make_content(CFG, ds), make_content(CFG, ds, prefix_cache=False)
    ti, ii = text_items(ds), image_items(ds)
    with torch.no_grad():
        torch.testing.assert_close(text_enc(ti, on), text_enc(ti, off), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(image_enc(ii, on), image_enc(ii, off), atol=1e-5, rtol=1e-4)
        assert sorted(c.n_filled for c in on.caches.values()) == sorted([len(ii), len(ti)])
        torch.testing.assert_close(text_enc(ti[:3], on), text_enc(ti[:3], off), atol=1e-5, rtol=1e-4)   # from the cache
        n = len(on.caches)
        p = text_enc.backbone.encoder.layer[1].output.dense.bias
        p.add_(0.05)                                     # the frozen part changed: the old features must not be used
        try:
            torch.testing.assert_close(text_enc(ti, on), text_enc(ti, off), atol=1e-5, rtol=1e-4)
            assert len(on.caches) == n + 1
        finally: p.sub_(0.05)
        te1 = TextEncoder(CFG.replace(text_trainable_blocks=1)).eval()   # other number of trainable blocks: other cache
        te1(ti, on); assert len(on.caches) == n + 2
        torch.testing.assert_close(te1(ti, on), te1(ti, off), atol=1e-5, rtol=1e-4)


def test_disk_cache_and_budget(ds, text_enc, tmp_path, caplog):
    ti = text_items(ds)
    a = make_content(CFG, ds, cache_dir=tmp_path/'cache')
    with torch.no_grad(): va = text_enc(ti, a)
    files = sorted(p.name for p in (tmp_path/'cache').iterdir())
    assert any(f.startswith('text-') and f.endswith('.npy') and 'filled' not in f for f in files)
    b = make_content(CFG, ds, cache_dir=tmp_path/'cache')             # a new process would see the same rows
    with torch.no_grad(): vb = text_enc(ti, b)
    assert next(iter(b.caches.values())).n_filled == len(ti)
    torch.testing.assert_close(va, vb)
    tiny = make_content(CFG, ds, cache_max_bytes=1000)
    with caplog.at_level(logging.INFO, logger='transrec'):
        with torch.no_grad(): vt = text_enc(ti, tiny)
    spilled, = tiny.caches.values()                                    # too big for memory: spilled to a float16 memmap
    assert spilled.dtype == np.float16 and spilled.path.exists() and 'cache_max_bytes' in caplog.text
    torch.testing.assert_close(vt, va, atol=2e-2, rtol=2e-2)
    half = make_content(CFG, ds, cache_dtype='float16')
    with torch.no_grad(): torch.testing.assert_close(text_enc(ti, half), va, atol=2e-2, rtol=2e-2)


def test_content_checks_and_keys(ds, tmp_path):
    c = make_content(CFG, ds)
    with pytest.raises(ValueError, match='make_content'): c.check(CFG.replace(image_size=64))
    with pytest.raises(ValueError, match='are not text items'): c.tokens(image_items(ds)[:1])
    other = load_dataset(tiny_mom(tmp_path/'o', seed=1, prefix='o'))
    assert dataset_item_key(ds) != dataset_item_key(other) and dataset_content_key(ds) != dataset_content_key(other)
    assert dataset_item_key(ds.subset_users([0])) == dataset_item_key(ds)
    q = c.log_q().exp()
    assert abs(q.sum().item() - 1) < 1e-5 and q.argmax().item() == int(np.argmax(ds.popularity()))


def test_item_tower_order_dedupe_modality(ds):
    cfg = CFG.replace(text_trainable_blocks=1)
    seed_everything(0); tower = ItemTower(cfg).eval()
    c = make_content(cfg, ds)
    ti, ii = text_items(ds), image_items(ds)
    items = torch.stack([ii[0], ti[2], ii[0], ti[0]])
    with torch.no_grad():
        v = tower(items, c)
        torch.testing.assert_close(v[0], v[2])
        torch.testing.assert_close(v[1], tower.text(ti[2:3], c)[0] + tower.modality_embedding.weight[0])
        torch.testing.assert_close(v[0], tower.image(ii[:1], c)[0] + tower.modality_embedding.weight[1])
        assert tower(torch.zeros(0, dtype=torch.long), c).shape == (0, cfg.dim)
    with pytest.raises(IndexError, match='item indices'): tower(torch.tensor([ds.n_items]), c)
    frozen = ItemTower(cfg.replace(kind='frozen'))
    assert count_parameters(frozen.text.backbone)['trainable'] == 0 and count_parameters(frozen.image.resnet)['trainable'] == 0
    assert count_parameters(frozen)['trainable'] > 0                 # pooling, projections, modality embedding
    no_mod = ItemTower(cfg.replace(modality_embedding=False))
    assert no_mod.modality_embedding is None
