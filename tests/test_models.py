"""SegViT models: shapes, the ATM mask semantics, QD, the inference rule, input checks."""
import pytest
import torch

import segvit_rt
from engine_helpers import sharpen
from segvit_rt.flops import count_params
from segvit_rt.models.vit import drop_path


def _tiny(variant, **kw):
    torch.manual_seed(0)
    return segvit_rt.create_model("tiny", variant, **kw)


def _head_mean_logits(q, k, heads):
    b, n, d = q.shape
    qh = q.reshape(b, n, heads, d // heads)
    kh = k.reshape(b, k.shape[1], heads, d // heads)
    return torch.einsum("bnhe,blhe->bnl", qh, kh) / heads * (d // heads) ** -0.5


def _capture_qk(model, attn_modules):
    """Record the projected q/k of the given cross-attention modules."""
    seen, handles = [], []
    for m in attn_modules:
        rec = {}
        handles.append(m.q.register_forward_hook(lambda mod, i, o, rec=rec: rec.__setitem__("q", o)))
        handles.append(m.k.register_forward_hook(lambda mod, i, o, rec=rec: rec.__setitem__("k", o)))
        seen.append(rec)
    return seen, handles


@pytest.mark.parametrize("variant", ["full", "shrunk"])
def test_output_shapes_train_and_eval(variant):
    model = _tiny(variant)
    cfg = model.cfg
    x = torch.randn(2, 3, 128, 160)
    model.train()
    out = model(x)
    assert out["pred_logits"].shape == (2, cfg.num_classes, cfg.num_classes + 1)
    assert out["pred_masks"].shape == (2, cfg.num_classes, 8, 10)
    assert len(out["aux_outputs"]) == 2
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == out["pred_logits"].shape
        assert aux["pred_masks"].shape == out["pred_masks"].shape
    model.eval()
    with torch.no_grad():
        out = model(x)
        labels = model.predict(x)
    assert "aux_outputs" not in out
    assert labels.shape == (2, 128, 160) and labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) < cfg.num_classes


def test_full_mask_is_cumulative_sum_of_last_layer_logits():
    model = _tiny("full").eval()
    head = model.decode_head
    attns = [getattr(head, f"decoder_{i}").layers[-1].multihead_attn for i in (1, 2, 3)]
    seen, handles = _capture_qk(model, attns)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 128))
    for h in handles:
        h.remove()
    stages = [_head_mean_logits(r["q"], r["k"], model.cfg.decoder_heads) for r in seen]
    expected = (stages[0] + stages[1] + stages[2]).reshape(out["pred_masks"].shape)
    torch.testing.assert_close(out["pred_masks"], expected, rtol=1e-4, atol=1e-4)


def test_shrunk_mask_is_last_layer_logits_and_all_layers_supervised():
    model = _tiny("shrunk").train()
    layers = model.decode_head.atm.decoder_1.layers
    seen, handles = _capture_qk(model, [layer.multihead_attn for layer in layers])
    torch.manual_seed(1)
    out = model(torch.randn(1, 3, 128, 128))
    for h in handles:
        h.remove()
    per_layer = [_head_mean_logits(r["q"], r["k"], model.cfg.decoder_heads) for r in seen]
    shape = out["pred_masks"].shape
    torch.testing.assert_close(out["pred_masks"], per_layer[2].reshape(shape), rtol=1e-4, atol=1e-4)
    for aux, logits in zip(out["aux_outputs"], per_layer[:2]):
        torch.testing.assert_close(aux["pred_masks"], logits.reshape(shape), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["full", "shrunk"])
def test_inference_makes_only_the_masks_it_uses(variant, monkeypatch):
    """In training every supervised output is made; in eval the Shrunk head's first two ATM layers
    make no mask (only the last one's is the prediction) and neither head classifies an intermediate
    stage. The final output is the same either way (no dropout here, so the modes compute alike)."""
    model = _tiny(variant, decoder_dropout=0.0)
    asked, classified = [], []
    real_atm = segvit_rt.ops.atm_attention
    monkeypatch.setattr(segvit_rt.ops, "atm_attention",
                        lambda *a, **kw: asked.append(kw.get("need_mask", True)) or real_atm(*a, **kw))
    head = model.decode_head.atm if variant == "shrunk" else model.decode_head
    head.class_embed.register_forward_hook(lambda *_: classified.append(1))
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        trained = model.train()(x)
        assert (sum(asked), len(classified)) == (3, 3)
        asked.clear(), classified.clear()
        out = model.eval()(x)
    masks_made = 1 if variant == "shrunk" else 3  # full: every stage's mask feeds the next
    assert (sum(asked), len(classified)) == (masks_made, 1)
    assert torch.equal(out["pred_logits"], trained["pred_logits"])
    assert torch.equal(out["pred_masks"], trained["pred_masks"])


def test_qd_block_downsamples_queries_and_residual():
    model = _tiny("shrunk").eval()
    vit = model.backbone
    cfg = model.cfg
    x = torch.randn(1, 64, cfg.embed_dim)  # an 8x8 token grid
    block = vit.blocks[cfg.shrink_idx]
    with torch.no_grad():
        got = block(x, qd_grid=(8, 8))
        y = block.norm1(x)
        q, k, v = block.attn.qkv(y).chunk(3, dim=-1)
        idx = torch.tensor([r * 8 + c for r in range(0, 8, 2) for c in range(0, 8, 2)])
        qd = q[:, idx].reshape(1, 16, cfg.num_heads, -1).transpose(1, 2)
        kh = k.reshape(1, 64, cfg.num_heads, -1).transpose(1, 2)
        vh = v.reshape(1, 64, cfg.num_heads, -1).transpose(1, 2)
        attn = torch.softmax(qd @ kh.transpose(-1, -2) / qd.shape[-1] ** 0.5, -1) @ vh
        h = x[:, idx] + block.attn.proj(attn.transpose(1, 2).reshape(1, 16, -1))
        expected = h + block.mlp(block.norm2(h))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_shrunk_backbone_outputs_1_16_before_qd_and_1_32_after():
    model = _tiny("shrunk").eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 128, 192))
    assert [grid for _, grid in feats] == [(8, 12), (4, 6)]
    assert [t.shape[1] for t, _ in feats] == [96, 24]


def test_predict_follows_the_segvit_inference_rule():
    model = sharpen(_tiny("full").eval())  # several classes per image: an all-one-class map proves nothing
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        out = model(x)
        labels = model.predict(x)
    assert len(labels.unique()) >= 2
    probs = out["pred_logits"].softmax(-1)[..., :-1]
    masks = torch.nn.functional.interpolate(out["pred_masks"], size=(128, 128), mode="bilinear").sigmoid()
    scores = (probs[..., :, None, None] * masks[:, :, None]).sum(1)  # b q c h w -> b c h w
    assert torch.equal(labels, scores.argmax(1))


def _position_ramps(size: int, dim: int) -> torch.Tensor:
    """Tokens [1, size*size, dim] (row-major) whose channel 0 is the row and channel 1 the column."""
    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                                indexing="ij")
    tokens = torch.zeros(1, size * size, dim)
    tokens[0, :, 0], tokens[0, :, 1] = rows.flatten(), cols.flatten()
    return tokens


def _assert_rows_and_columns_kept(tokens: torch.Tensor, grid: tuple[int, int]):
    """Channel 0 varies down the rows only and channel 1 along the columns only, both increasing."""
    row_ramp, col_ramp = (tokens[0, :, i].reshape(grid) for i in (0, 1))
    assert torch.allclose(row_ramp, row_ramp[:, :1].expand(grid), atol=1e-5)
    assert torch.allclose(col_ramp, col_ramp[:1].expand(grid), atol=1e-5)
    assert bool((row_ramp[1:, 0] > row_ramp[:-1, 0]).all()) and bool((col_ramp[0, 1:] > col_ramp[0, :-1]).all())


def test_position_embedding_resized_for_other_input_sizes():
    """A non-square grid keeps rows as rows and columns as columns (a transposed resize gives the same
    token count, so shapes alone would not show it)."""
    model = _tiny("full").eval()
    vit = model.backbone
    assert torch.equal(vit.grid_pos_embed((8, 8)), vit.pos_embed[:, 1:])
    assert vit.grid_pos_embed((10, 6)).shape == (1, 60, model.cfg.embed_dim)
    with torch.no_grad():
        vit.pos_embed[:, 1:] = _position_ramps(8, model.cfg.embed_dim)
    _assert_rows_and_columns_kept(vit.grid_pos_embed((10, 6)), (10, 6))
    _assert_rows_and_columns_kept(vit.grid_pos_embed((5, 12)), (5, 12))


@pytest.mark.parametrize(
    "variant, size, message",
    [("full", (3, 120, 128), "multiple of 16"), ("shrunk", (3, 144, 128), "multiple of 32"), ("full", (1, 128, 128), "[B, 3, H, W]")],
)
def test_bad_input_shapes_are_named(variant, size, message):
    model = _tiny(variant)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        model(torch.randn(1, *size))


def test_unknown_options_are_rejected():
    with pytest.raises(ValueError, match="unknown preset"):
        segvit_rt.create_model("vit_huge")
    with pytest.raises(ValueError, match="variant"):
        segvit_rt.create_model("tiny", "half")
    with pytest.raises(ValueError, match="kernels"):
        segvit_rt.create_model("tiny", kernels="cuda")


@pytest.mark.parametrize("field, value, message", [
    ("embed_dim", 130, "embed_dim 130 is not divisible by num_heads 4"),
    ("decoder_heads", 3, "decoder_dim 64 is not divisible by decoder_heads 3"),
    ("out_indices", (1, 1, 5), r"out_indices \(1, 1, 5\) must be distinct block numbers"),
    ("out_indices", (), "out_indices"),
    ("num_classes", 0, "num_classes must be a positive integer, got 0"),
    ("patch_size", 0, "patch_size must be a positive integer"),
    ("crop_size", 100, "crop_size 100 is not a multiple of patch_size 16"),
    ("mean", (1.0, 2.0), "mean needs 3 values"),
    ("std", (1.0, 0.0, 1.0), "std values must be positive"),
    ("std", (float("nan"), 1.0, 1.0), r"std values must be positive finite numbers, got \(nan"),
    ("std", (float("inf"), 1.0, 1.0), "std values must be positive finite"),
    ("mean", (float("nan"), 1.0, 1.0), r"mean values must be finite numbers, got \(nan"),
    ("mean", ("a", 1.0, 1.0), "mean values must be finite numbers"),
    ("mlp_ratio", float("inf"), "mlp_ratio must be positive and finite, got inf"),
    ("num_classes", True, "num_classes must be a positive integer, got True"),
    ("shrink_idx", True, "shrink_idx must be a block number, got True"),
    ("decoder_dropout", 1.0, r"decoder_dropout must be in \[0, 1\)"),
    ("class_names", ("a", "b"), "2 class names for 5 classes"),
])
def test_an_unbuildable_config_names_its_field(field, value, message):
    with pytest.raises(ValueError, match=f"config 'tiny': .*{message}"):
        segvit_rt.create_model("tiny", **{field: value})


@pytest.mark.parametrize("variant, field, value, message", [
    ("full", "out_indices", (1, 3, 9), r"out_indices \(1, 3, 9\) must be block numbers in 0..5 \(depth 6\)"),
    ("full", "depth", 3, r"out_indices \(1, 3, 5\) must be block numbers in 0..2"),
    ("shrunk", "shrink_idx", 6, r"shrink_idx 6 \(the block QD replaces\) must be in 1..5"),
    ("shrunk", "shrink_idx", 0, "shrink_idx 0"),
])
def test_the_blocks_a_variant_takes_features_from_must_exist(variant, field, value, message):
    with pytest.raises(ValueError, match=f"config 'tiny': {message}"):
        segvit_rt.create_model("tiny", variant, **{field: value})


def test_each_variant_ignores_the_other_variants_block_field():
    """A full model never uses shrink_idx, a Shrunk one never out_indices: models built before the
    checks with such a field past a smaller depth still build."""
    x = torch.randn(1, 3, 128, 128)
    assert _tiny("full", depth=3, out_indices=(0, 1, 2)).eval()(x)["pred_masks"].shape == (1, 5, 8, 8)
    assert _tiny("shrunk", depth=4).eval()(x)["pred_masks"].shape == (1, 5, 8, 8)


@pytest.mark.parametrize("variant", ["full", "shrunk"])
def test_an_empty_image_batch_is_named(variant):
    with pytest.raises(ValueError, match=f"image size 0x32 must be a positive multiple of {16 if variant == 'full' else 32}"):
        _tiny(variant)(torch.zeros(1, 3, 0, 32))


@pytest.mark.parametrize("dtype, message", [(torch.uint8, "normalised float image"),
                                            (torch.float64, "float64 and the model's weights torch.float32")])
def test_an_image_batch_of_another_dtype_is_named(dtype, message):
    with pytest.raises(TypeError, match=message):
        _tiny("full")(torch.zeros(1, 3, 128, 128, dtype=dtype))


def test_autocast_takes_a_batch_of_its_dtype_into_a_float32_model():
    model, batch = _tiny("full"), torch.zeros(1, 3, 128, 128, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(batch)["pred_logits"].dtype == torch.bfloat16
    with pytest.raises(TypeError, match="bfloat16 and the model's weights torch.float32"):
        model(batch)


@pytest.mark.parametrize("variant", ["full", "shrunk"])
def test_predictions_come_from_the_eval_forward_in_any_mode(variant):
    """Dropout and stochastic depth never reach predict/semantic_logits; each module keeps its mode."""
    model = _tiny(variant, drop_path_rate=0.2)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        model.eval()
        scores, labels = model.semantic_logits(x), model.predict(x)
        model.train()
        model.backbone.blocks[0].eval()  # a mixed state, as when part of a model is frozen
        assert torch.equal(model.semantic_logits(x), scores) and torch.equal(model.predict(x), labels)
    assert model.training and model.decode_head.training and not model.backbone.blocks[0].training
    assert model.backbone.blocks[1].training


def test_train_mode_backward_reaches_every_parameter():
    model = _tiny("shrunk").train()
    out = model(torch.randn(2, 3, 128, 128))
    loss = out["pred_logits"].sum() + out["pred_masks"].sum()
    loss = loss + sum(a["pred_logits"].sum() + a["pred_masks"].sum() for a in out["aux_outputs"])
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []


def test_parameter_names_match_timm_and_official_head():
    keys = set(_tiny("full").state_dict())
    for k in [
        "backbone.patch_embed.proj.weight", "backbone.pos_embed", "backbone.blocks.0.norm1.weight",
        "backbone.blocks.5.attn.qkv.weight", "backbone.blocks.5.attn.proj.bias", "backbone.blocks.5.mlp.fc1.weight",
        "decode_head.input_proj_1.weight", "decode_head.proj_norm_3.bias", "decode_head.q.weight",
        "decode_head.class_embed.weight", "decode_head.decoder_2.layers.1.self_attn.in_proj_weight",
        "decode_head.decoder_2.layers.1.self_attn.out_proj.weight",
        "decode_head.decoder_3.layers.2.multihead_attn.v.bias", "decode_head.decoder_1.layers.0.linear1.weight",
        "decode_head.decoder_1.layers.0.norm3.weight",
    ]:
        assert k in keys, k


def test_vit_b_backbone_has_timm_vit_base_parameter_count():
    # timm vit_base_patch16_224 has 86,567,656 parameters; without its classifier (769,000),
    # final norm (1,536) and cls token (768), that is the backbone we build at crop 224.
    with torch.device("meta"):
        model = segvit_rt.create_model("vit_b16_ade20k_512", crop_size=224)
    assert count_params(model.backbone) == 85_796_352


def test_drop_path_drops_whole_samples_in_training_only():
    torch.manual_seed(0)
    branch = torch.ones(4000, 3, 2)
    dropped = drop_path(branch, 0.25, training=True)
    per_sample = dropped.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1)).all()  # all or nothing per sample
    assert (per_sample[:, 0] == 0).float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert dropped.mean().item() == pytest.approx(1.0, abs=0.05)  # unbiased
    assert drop_path(branch, 0.25, training=False) is branch
    model = segvit_rt.create_model("tiny", variant="shrunk", drop_path_rate=0.2)
    assert [round(b.drop_path_rate, 6) for b in model.backbone.blocks] == [0.0, 0.04, 0.08, 0.12, 0.16, 0.2]
    x = torch.randn(2, 3, 64, 64)
    plain = segvit_rt.create_model("tiny", variant="shrunk").eval()
    plain.load_state_dict(model.state_dict())  # same parameter names: stochastic depth adds none
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x)["pred_masks"], plain(x)["pred_masks"])
        model.train()
        torch.manual_seed(1)
        first = model(x)["pred_masks"]
        torch.manual_seed(1)
        assert torch.equal(first, model(x)["pred_masks"])
        assert not torch.equal(first, model(x)["pred_masks"])  # another draw of the dropped branches


def test_presets_match_the_official_configs():
    p = segvit_rt.PRESETS
    assert p["vit_l16_ade20k_640"].out_indices == (7, 15, 23) and p["vit_l16_ade20k_640"].shrink_idx == 8
    assert p["vit_b16_ade20k_512"].out_indices == (5, 7, 11) and p["vit_b16_ade20k_512"].shrink_idx == 6
    assert p["vit_l16_ade20k_640"].decoder_dim == 512 and p["vit_b16_ade20k_512"].decoder_dim == 384
    for cfg in p.values():
        assert cfg.decoder_dim // cfg.decoder_heads == 32
        if cfg.embed_dim == 1024:
            assert cfg.mean == cfg.std == (127.5, 127.5, 127.5)
    assert [p[n].num_classes for n in ("vit_l16_cocostuff10k_512", "vit_l16_pcontext_480")] == [171, 60]
    assert len(p["vit_l16_ade20k_640"].names()) == 150
    # image scales (long, short) and test min size: official train/test Resize settings
    assert p["vit_l16_ade20k_640"].scales() == ((2048, 640), None)
    assert p["vit_b16_ade20k_512"].scales() == ((2048, 512), None)
    assert p["vit_l16_cocostuff10k_512"].scales() == ((2048, 512), 512)
    assert p["vit_l16_pcontext_480"].scales() == ((520, 520), 480)
    assert p["vit_l16_pcontext_480"].scales(240) == ((260, 260), 240)  # scaled with a smaller crop
    for name in ("vit_l16_pcontext_480", "vit_l16_cocostuff10k_512", "vit_l16_ade20k_640", "tiny"):
        smaller = segvit_rt.get_config(name, crop_size=p[name].crop_size // 2)  # e.g. the trainer's --crop
        assert smaller.scales() == p[name].scales(p[name].crop_size // 2), name
        assert smaller.slide_stride == round(p[name].slide_stride / 2), name
    assert segvit_rt.get_config("tiny", crop_size=64, slide_stride=40).slide_stride == 40
    assert p["tiny"].scales(64) == ((256, 64), None)
    assert [p[n].drop_path_rate for n in ("vit_l16_ade20k_640", "vit_b16_ade20k_512", "tiny")] == [0.3, 0.1, 0.0]
