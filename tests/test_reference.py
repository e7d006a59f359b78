"""The reference TransRec configuration (issue #11): every field of `ModelConfig.reference()` against the values the
issue lists (written out here, not read from the code), and the reference architecture's behaviour: a post-LN user
tower, positions counted from the oldest item, a modality embedding on the history only, the reference text pooling."""
import copy, os
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F
from transrec.core import ModelConfig, TrainConfig, seed_everything
from transrec.data import load_dataset
from transrec.batches import train_batches, eval_batches
from transrec.encoders import make_content, TextEncoder, ReferencePooling
from transrec.model import UserTower, TransRec, train_seq_len, recommend, load_model, save_model
from transrec.metrics import user_vectors_for
from transrec.data import tiny_mom

torch.set_num_threads(min(2, torch.get_num_threads()))
SMALL = ModelConfig(dim=16, n_layers=1, n_heads=2, max_len=6, text_trainable_blocks=1, image_size=32, text_max_tokens=12)

# The reference values, one per field (text_model stays 'minilm': bert-base-chinese is not available offline).
REFERENCE_MODEL = [('kind', 'transrec'), ('dim', 256), ('n_layers', 4), ('n_heads', 4), ('ffn_dim', 128),
                   ('tower_norm', 'post'), ('positions', 'oldest'), ('dropout', 0.1), ('max_len', 25), ('readout', 'last'),
                   ('train_windows', 'last'), ('loss', 'bce'), ('n_pos', 5), ('n_neg', 1), ('modality_embedding', 'none'),
                   ('text_pooling', 'reference'), ('text_max_tokens', 32), ('text_trainable_blocks', 2),
                   ('image_model', 'resnet18'), ('image_size', 224), ('image_trainable_blocks', 2),
                   ('image_mean', (0.485, 0.456, 0.406)), ('image_std', (0.229, 0.224, 0.225)), ('text_model', 'minilm')]
REFERENCE_TRAIN = [('lr', 1e-4), ('encoder_lr', 1e-4), ('weight_decay', 0.0), ('schedule', 'constant'), ('warmup_steps', 0),
                   ('batch_size', 128), ('epochs', 50), ('patience', 0), ('amp', 'none')]


@pytest.fixture(scope='module')
def built():
    "One model per configuration for the whole file (building loads MiniLM and a ResNet); tests get copies."
    cache = {}
    def build(cfg, make=TransRec):
        key = (repr(cfg), make)
        if key not in cache:
            seed_everything(0)
            cache[key] = make(cfg)
        return copy.deepcopy(cache[key])
    return build


@pytest.fixture(scope='module')
def ds(tmp_path_factory):
    "Captions of 1-8 words (so text batches carry different amounts of padding), 3-10 clicks per user."
    return load_dataset(tiny_mom(tmp_path_factory.mktemp('ref')/'tiny', 16, 8, 16, seq_len=(3, 11)))


# ---------------------------------------------------------------- the fields

@pytest.mark.parametrize('field,value', REFERENCE_MODEL, ids=[f for f, _ in REFERENCE_MODEL])
def test_reference_model_field(field, value):
    assert getattr(ModelConfig.reference(), field) == value


@pytest.mark.parametrize('field,value', REFERENCE_TRAIN, ids=[f for f, _ in REFERENCE_TRAIN])
def test_reference_train_field(field, value):
    if not hasattr(TrainConfig, 'reference'): pytest.skip('TrainConfig.reference() is added on another branch')
    assert getattr(TrainConfig.reference(), field) == value


def test_reference_overrides_and_round_trip():
    cfg = ModelConfig.reference(max_len=10)
    assert (cfg.max_len, cfg.tower_norm) == (10, 'post')
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_workbench_defaults_unchanged():
    "The new settings default to the behaviour from before they existed (old checkpoints load as they were)."
    cfg = ModelConfig()
    assert (cfg.tower_norm, cfg.ffn_dim, cfg.positions, cfg.modality_embedding, cfg.text_pooling) == \
           ('pre', 0, 'newest', 'items', 'attention')


@pytest.mark.parametrize('given,placement', [(True, 'items'), (False, 'none'), ('True', 'items'), ('false', 'none'),
                                             ('history', 'history')])
def test_modality_embedding_accepts_booleans(given, placement):
    assert ModelConfig.from_dict({'modality_embedding': given}).modality_embedding == placement


def test_bad_reference_settings_are_refused():
    with pytest.raises(ValueError, match="tower_norm='middle'"): ModelConfig(tower_norm='middle')
    with pytest.raises(ValueError, match="positions='left'"): ModelConfig(positions='left')
    with pytest.raises(ValueError, match="modality_embedding='both'"): ModelConfig(modality_embedding='both')
    with pytest.raises(ValueError, match='ffn_dim=-4'): ModelConfig(ffn_dim=-4)


# ---------------------------------------------------------------- user tower

def post_ln_layer(layer: nn.TransformerEncoderLayer, h, attn_mask):
    "A BERT layer written out: LayerNorm(h + attention(h)), then LayerNorm(y + W2 gelu(W1 y)) (eval: no dropout)."
    y = layer.norm1(h + layer.self_attn(h, h, h, attn_mask=attn_mask, need_weights=False)[0])
    return layer.norm2(y + layer.linear2(F.gelu(layer.linear1(y))))


def test_post_ln_tower_is_post_ln():
    seed_everything(0)
    cfg = ModelConfig.reference()
    tower = UserTower(cfg).eval()
    x = torch.randn(3, 7, 256)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1] * 7, [0, 0, 0, 0, 0, 1, 1]]).bool()
    with torch.no_grad():
        got = tower(x, mask)
        h0 = x + tower.position.weight[tower.positions(mask)]        # no input LayerNorm in the reference
        am = tower.attention_mask(mask)
        by_hand, by_torch, pre_ln = h0, h0, h0
        for layer in tower.encoder.layers:
            twin = nn.TransformerEncoderLayer(256, 4, dim_feedforward=128, dropout=0.1, activation='gelu', layer_norm_eps=1e-12,
                                              batch_first=True, norm_first=False).eval()
            twin.load_state_dict(layer.state_dict())
            pre = nn.TransformerEncoderLayer(256, 4, dim_feedforward=128, dropout=0.1, activation='gelu', layer_norm_eps=1e-12,
                                             batch_first=True, norm_first=True).eval()
            pre.load_state_dict(layer.state_dict())
            by_hand, by_torch, pre_ln = post_ln_layer(layer, by_hand, am), twin(by_torch, src_mask=am), pre(pre_ln, src_mask=am)
    assert len(tower.encoder.layers) == 4 and tower.encoder.norm is None
    assert tower.encoder.layers[0].linear1.out_features == 128            # FFN = d / 2, not 4 d
    torch.testing.assert_close(got, by_torch, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, by_hand, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, pre_ln, atol=1e-2)                     # the pre-LN reading of the same weights differs


def test_post_ln_tower_has_bert_init():
    seed_everything(0)
    tower = UserTower(ModelConfig.reference())
    linears = [m for m in tower.modules() if isinstance(m, nn.Linear)]
    assert all(abs(m.weight.std().item() - 0.02) < 0.002 for m in linears)
    assert all(m.bias.abs().max() == 0 for m in linears)
    for attn in (m for m in tower.modules() if isinstance(m, nn.MultiheadAttention)):
        assert abs(attn.in_proj_weight.std().item() - 0.02) < 0.002 and attn.in_proj_bias.abs().max() == 0
    assert abs(tower.position.weight.std().item() - 0.02) < 0.002
    norms = [m for m in tower.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 8 and all((m.weight == 1).all() and (m.bias == 0).all() and m.eps == 1e-12 for m in norms)


def test_default_tower_stays_pre_ln():
    tower = UserTower(SMALL)
    layer = tower.encoder.layers[0]
    assert layer.norm_first and layer.linear1.out_features == 4 * SMALL.dim and isinstance(tower.encoder.norm, nn.LayerNorm)


def test_oldest_item_has_position_zero_whatever_the_padding():
    cfg = SMALL.replace(positions='oldest', tower_norm='post', dropout=0.0)
    tower = UserTower(cfg).eval()
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]]).bool()
    assert tower.positions(mask).tolist() == [[0, 0, 0, 0, 1, 2], [0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 0, 0]]
    seen = []
    tower.encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    x = torch.randn(3, 6, 16)
    tower(x, mask)
    added = seen[0] - x                                                   # what the tower added to each slot
    for row, first in ((0, 3), (1, 0), (2, 5)):
        torch.testing.assert_close(added[row, first], tower.position.weight[0].detach())
    # the same three items with 0 or 3 slots of padding: the same states
    torch.testing.assert_close(tower(x[:1, 3:], mask[:1, 3:])[0].detach(), tower(x[:1], mask[:1])[0, 3:].detach(),
                               atol=1e-5, rtol=1e-5)
    newest = UserTower(cfg.replace(positions='newest'))
    assert newest.positions(mask).tolist() == [0, 1, 2, 3, 4, 5]          # default: aligned to the newest slot


# ---------------------------------------------------------------- modality embedding on the history only

def test_history_modality_embedding_changes_users_not_candidates(ds, built):
    cfg = SMALL.replace(modality_embedding='history')
    model = built(cfg).eval()
    content = make_content(cfg, ds)
    assert model.item_tower.modality_embedding is None and model.user_tower.modality is not None
    items_before = model.all_item_vectors(content)
    users_before, users, _ = user_vectors_for(model, ds, items_before, 'test')
    with torch.no_grad(): model.user_tower.modality.weight.mul_(50)
    items_after = model.all_item_vectors(content)
    users_after, _, _ = user_vectors_for(model, ds, items_after, 'test')
    assert torch.equal(items_before, items_after)                         # candidates untouched
    assert not torch.allclose(users_before, users_after, atol=1e-3)       # user vectors moved
    # evaluation passes each history item's own modality
    b = next(iter(eval_batches(ds, 'test', batch_size=4, max_len=cfg.max_len)))
    mod = torch.tensor(np.asarray(ds.modality))
    with torch.no_grad():
        want = model.user_vectors(items_after[b.hist], b.mask, hist_modality=mod[b.hist])
        wrong = model.user_vectors(items_after[b.hist], b.mask, hist_modality=1 - mod[b.hist])
    row = {int(u): i for i, u in enumerate(users)}
    got = users_after[[row[int(u)] for u in b.users]]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, wrong, atol=1e-3)
    with pytest.raises(ValueError, match='hist_modality'): model.user_vectors(items_after[b.hist], b.mask)
    ids, _ = recommend(model, content, ds.seqs[0][:-1], k=3)
    assert len(ids) == 3 and set(ids) <= set(ds.item_ids)


def test_history_modality_embedding_is_trained(ds, built):
    cfg = SMALL.replace(modality_embedding='history')
    model = built(cfg)
    content = make_content(cfg, ds)
    batch = next(iter(train_batches(ds, batch_size=8, seq_len=train_seq_len(cfg), n_neg=1, seed=0, epoch=0)))
    model.eval()                                                          # no dropout: the two losses below are comparable
    loss, _ = model.loss(batch, content)
    loss.backward()
    assert model.user_tower.modality.weight.grad.abs().sum() > 0
    with torch.no_grad(): model.user_tower.modality.weight.mul_(50)
    assert not torch.isclose(model.loss(batch, content)[0], loss)


def test_items_placement_still_moves_candidates(ds, built):
    "The workbench placement ('items', former True) adds the embedding to every item vector, candidates included."
    model = built(SMALL).eval()
    content = make_content(SMALL, ds)
    before = model.all_item_vectors(content)
    with torch.no_grad(): model.item_tower.modality_embedding.weight.add_(1.0)
    torch.testing.assert_close(model.all_item_vectors(content), before + 1.0)


def test_old_config_with_boolean_modality_embedding_loads(ds, tmp_path, built):
    model = built(SMALL)
    d = save_model(model, tmp_path/'m')
    cfg_file = d/'config.json'
    cfg_file.write_text(cfg_file.read_text().replace('"modality_embedding": "items"', '"modality_embedding": true'))
    assert '"modality_embedding": true' in cfg_file.read_text()
    loaded = load_model(d)
    assert loaded.cfg.modality_embedding == 'items' and loaded.item_tower.modality_embedding is not None


# ---------------------------------------------------------------- reference text pooling

def test_reference_pooling_shape_and_masking(ds, built):
    cfg = ModelConfig.reference(dim=16)
    enc = built(cfg, TextEncoder).eval()
    assert isinstance(enc.pool, ReferencePooling)
    assert (enc.pool.n_heads, enc.pool.head_dim, enc.pool.out_dim) == (4, 20, 80)
    assert enc.pool.additive.proj.out_features == 200                     # additive attention, query dim 200
    assert (enc.backbone.config.hidden_size, enc.proj.in_features, enc.proj.out_features) == (384, 80, 16)
    content = make_content(cfg, ds, prefix_cache=False)
    text = torch.as_tensor(np.flatnonzero(ds.modality == 0))
    lengths = content.tokens(text)[1].sum(1)
    short, long = int(text[lengths.argmin()]), int(text[lengths.argmax()])
    assert lengths.min() < lengths.max()
    with torch.no_grad():
        alone = enc(torch.tensor([short]), content)
        padded = enc(torch.tensor([short, long]), content)                # `short` now carries padding
    assert padded.shape == (2, 16)
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-4)


def test_reference_pooling_masks_padding_tokens():
    seed_everything(0)
    pool = ReferencePooling(384).eval()
    h = torch.randn(2, 7, 384)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1] * 7]).bool()
    out = pool(h, mask)
    assert out.shape == (2, 80)
    h2 = h.clone()
    h2[0, 3:] = 100.0
    torch.testing.assert_close(pool(h2, mask), out)
    unmasked = pool(h2, torch.ones(2, 7, dtype=torch.bool))
    assert not torch.allclose(unmasked[0], out[0], atol=1e-3)             # the mask is what hides them


def test_reference_pooling_trains(ds, built):
    cfg = ModelConfig.reference(dim=16)
    enc = built(cfg, TextEncoder).train()
    content = make_content(cfg, ds, prefix_cache=False)
    enc(torch.as_tensor(np.flatnonzero(ds.modality == 0)[:4]), content).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.pool.parameters())


def test_readme_table_lists_every_difference():
    readme = (Path(__file__).resolve().parents[1]/'README.md').read_text()
    assert '## Reference preset vs workbench preset' in readme
    section = readme.split('## Reference preset vs workbench preset')[1].split('\n## ')[0]
    rows = [line.split('|')[1].strip() for line in section.splitlines() if line.startswith('| ') and '---' not in line]
    for setting in ('user tower norm', 'feed-forward size', 'positions', 'modality embedding', 'text pooling', 'item / user dim',
                    'layers', 'heads', 'history length', 'readout', 'training windows', 'loss', 'negatives', 'optimiser',
                    'learning rate', 'weight decay', 'schedule', 'warmup', 'batch', 'epochs', 'precision', 'early stopping',
                    'text model', 'image size', 'image weights'):
        assert setting in rows, setting
    assert all(line.count('|') == 5 for line in section.splitlines() if line.startswith('| '))   # 4 filled columns
