"""The timm and HuggingFace adapters: shapes, weights really loaded and adapted, export, misuse.

No network: checkpoints are tiny random models saved locally in the libraries' real formats.
"""

from __future__ import annotations

import os

import pytest
import safetensors.torch
import timm
import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from transformers import ViTForImageClassification, ViTImageProcessor

from tests.helpers import GREY_8X8, MEAN, STD, TINY_TIMM, save_tiny_hf_vit
from vit_rpe.models.backbone import layer_ids
from vit_rpe.models.pretrained import HFViT, TimmBackbone
from vit_rpe.utils.errors import CheckpointError, ConfigError, UserError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return save_tiny_hf_vit(tmp_path_factory.mktemp("hf_tiny"))


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory):
    """The state dict of a 224x224 RGB ViT-Tiny layout with a 1000-class head, as timm stores weights."""
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_TIMM)
    path = tmp_path_factory.mktemp("timm") / "vit_tiny.safetensors"
    safetensors.torch.save_file(source.state_dict(), path)
    return path, source.state_dict()


# --- HuggingFace ------------------------------------------------------------------------------


def test_hf_vit_loads_the_checkpoint_with_a_new_head_and_label_maps(hf_folder):
    saved = ViTForImageClassification.from_pretrained(hf_folder)
    net = HFViT(str(hf_folder), num_classes=4, class_names=["cat", "dog", "fox", "owl"])
    assert net.model.config.id2label == {0: "cat", 1: "dog", 2: "fox", 3: "owl"}
    assert net.model.config.label2id["owl"] == 3
    assert net.get_classifier().out_features == 4
    for name, param in saved.vit.named_parameters():  # the backbone is the checkpoint's
        torch.testing.assert_close(net.model.vit.get_parameter(name), param, rtol=0, atol=0)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 4)


def test_hf_vit_data_config_comes_from_the_image_processor(hf_folder):
    net = HFViT(str(hf_folder), num_classes=3)
    assert net.data_config() == {
        "input_size": (3, 16, 16),
        "mean": pytest.approx(tuple(MEAN)),
        "std": pytest.approx(tuple(STD)),
    }
    grey = HFViT(str(hf_folder), num_classes=3, in_chans=1, image_size=8)
    assert grey.data_config() == {
        "input_size": (1, 8, 8),
        "mean": (pytest.approx(0.4),),
        "std": (pytest.approx(0.25),),
    }
    # grey images are repeated to RGB; 8x8 images interpolate the 4x4 grid of position embeddings to 2x2
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(grey(x), grey(x.expand(-1, 3, -1, -1)))


def test_hf_vit_layer_ids_number_embeddings_blocks_and_head(hf_folder):
    net = HFViT(str(hf_folder), num_classes=3)
    ids = layer_ids(net)
    assert set(ids) == {name for name, _ in net.named_parameters()}
    assert {ids[n] for n in ids if ".embeddings." in n} == {0}
    assert {ids[n] for n in ids if n.startswith("model.classifier.")} == {3}
    assert {ids[n] for n in ids if n.startswith("model.vit.layernorm.")} == {2}  # with the last block
    assert sorted(set(ids.values())) == [0, 1, 2, 3]
    assert "model.vit.embeddings.position_embeddings" in net.no_weight_decay()


def test_hf_vit_save_pretrained_reloads_to_identical_logits(hf_folder, tmp_path):
    net = HFViT(str(hf_folder), num_classes=2, class_names=["no", "yes"]).eval()
    net.save_pretrained(tmp_path / "out", {"input_size": (1, 16, 16), "mean": (0.1,), "std": (0.2,)})
    reloaded = ViTForImageClassification.from_pretrained(tmp_path / "out").eval()
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(reloaded(pixel_values=x).logits, net(x), rtol=0, atol=0)
    assert reloaded.config.id2label == {0: "no", 1: "yes"}
    processor = ViTImageProcessor.from_pretrained(tmp_path / "out")
    assert list(processor.image_mean) == pytest.approx([0.1] * 3)  # the model takes RGB


def test_hf_vit_missing_folder_and_unreachable_hub_are_clear_errors(monkeypatch, tmp_path):
    with pytest.raises(CheckpointError, match="not a folder"):
        HFViT(str(tmp_path / "missing"), num_classes=3)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    with pytest.raises(UserError, match=r"HF_HUB_OFFLINE=1 is set.*local folder"):
        HFViT("google/vit-base-patch16-224-in21k", num_classes=3)


# --- timm -------------------------------------------------------------------------------------


def test_timm_from_scratch_keeps_the_datamodule_normalisation():
    net = TimmBackbone(
        "vit_tiny_patch16_224",
        num_classes=10,
        pretrained=False,
        img_size=28,
        in_chans=1,
        patch_size=4,
        model_kwargs=TINY_TIMM,
    )
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert net.data_config() == {"input_size": (1, 28, 28)}  # no mean/std: the data's own
    assert TimmBackbone(
        "vit_tiny_patch16_224", num_classes=10, pretrained=False, model_kwargs=TINY_TIMM
    ).data_config() == {"input_size": (3, 224, 224)}


def test_timm_local_weights_load_unchanged_at_the_same_size(timm_file):
    path, source = timm_file
    net = TimmBackbone(
        "vit_tiny_patch16_224", num_classes=1000, checkpoint_path=str(path), model_kwargs=TINY_TIMM
    )
    for name, value in source.items():
        torch.testing.assert_close(net.model.state_dict()[name], value, rtol=0, atol=0)
    assert net.pretrained and net.data_config()["mean"] == pytest.approx((0.5,) * 3)  # the checkpoint's


def test_timm_local_weights_adapt_to_28x28_grey_images_and_a_new_head(timm_file, tmp_path):
    _, source = timm_file
    pth = tmp_path / "weights.pth"  # a .pth file works the same as .safetensors
    torch.save(source, pth)
    net = TimmBackbone(
        "vit_tiny_patch16_224",
        num_classes=10,
        checkpoint_path=str(pth),
        img_size=28,
        in_chans=1,
        patch_size=4,
        model_kwargs=TINY_TIMM,
    )
    state = net.model.state_dict()
    # 14x14 position embeddings interpolated to the 7x7 grid of 4x4 patches
    expected_pos = resample_abs_pos_embed(source["pos_embed"], new_size=(7, 7), num_prefix_tokens=1)
    torch.testing.assert_close(state["pos_embed"], expected_pos)
    # 16x16 RGB kernels resampled to 4x4 and summed over the colour channels for grey input
    expected_kernel = resample_patch_embed(source["patch_embed.proj.weight"], [4, 4]).sum(1, keepdim=True)
    torch.testing.assert_close(state["patch_embed.proj.weight"], expected_kernel, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state["blocks.1.attn.qkv.weight"], source["blocks.1.attn.qkv.weight"])
    assert state["head.weight"].shape == (10, 32)
    assert net.data_config() == {
        "input_size": (1, 28, 28),
        "mean": (pytest.approx(0.5),),
        "std": (pytest.approx(0.5),),
    }
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_timm_export_reloads_to_identical_logits(tmp_path):
    net = TimmBackbone("vit_tiny_patch16_224", num_classes=3, class_names=["a", "b", "c"], **GREY_8X8).eval()
    net.save_pretrained(tmp_path / "out", {"input_size": (1, 8, 8), "mean": (0.2,), "std": (0.3,)})
    x = torch.randn(2, 1, 8, 8)
    plain = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    torch.testing.assert_close(plain(x), net(x), rtol=0, atol=0)
    adapter = TimmBackbone(f"local-dir:{tmp_path / 'out'}", num_classes=3, in_chans=1).eval()
    torch.testing.assert_close(adapter(x), net(x), rtol=0, atol=0)
    # the normalisation training used travels with the weights
    assert adapter.data_config() == {
        "input_size": (1, 8, 8),
        "mean": (pytest.approx(0.2),),
        "std": (pytest.approx(0.3),),
    }


def test_timm_layer_ids_follow_timms_grouping():
    net = TimmBackbone("vit_tiny_patch16_224", num_classes=3, pretrained=False, model_kwargs=TINY_TIMM)
    ids = layer_ids(net)
    assert max(ids.values()) == 3  # stem, two blocks (the final norm with the last), head
    assert ids["model.pos_embed"] == 0
    assert ids["model.blocks.0.attn.qkv.weight"] == 1
    assert ids["model.norm.weight"] == 2
    assert ids["model.head.weight"] == 3
    assert "model.pos_embed" in net.no_weight_decay()


def test_timm_misuse_gives_clear_errors(tmp_path, timm_file, monkeypatch):
    with pytest.raises(ConfigError, match="not a timm model"):
        TimmBackbone("vit_tinyy_patch16_224", num_classes=3)
    with pytest.raises(CheckpointError, match="does not exist"):
        TimmBackbone("vit_tiny_patch16_224", num_classes=3, checkpoint_path=str(tmp_path / "none.pth"))
    path, _ = timm_file  # a ViT-Tiny state dict is not a ViT-Small
    with pytest.raises(CheckpointError, match="not a state dict of timm model vit_small_patch16_224"):
        TimmBackbone(
            "vit_small_patch16_224", num_classes=3, checkpoint_path=str(path), model_kwargs=dict(depth=2)
        )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    with pytest.raises(UserError, match=r"HF_HUB_OFFLINE=1.*checkpoint_path"):
        TimmBackbone("vit_tiny_patch16_224", num_classes=3, pretrained=True, model_kwargs=TINY_TIMM)


def test_timm_takes_architecture_arguments_from_scratch():
    net = TimmBackbone(
        "vit_small_patch16_224",
        num_classes=3,
        pretrained=False,
        img_size=8,
        in_chans=1,
        patch_size=2,
        embed_dim=24,
        depth=2,
        num_heads=3,
        mlp_ratio=2.0,
        qkv_bias=False,
    )
    model = net.model
    assert model.embed_dim == 24 and len(model.blocks) == 2 and model.blocks[0].attn.num_heads == 3
    assert model.blocks[0].mlp.fc1.out_features == 48 and model.blocks[0].attn.qkv.bias is None
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_timm_pretrained_weights_of_another_size_are_refused_before_any_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))  # a download would fail differently
    with pytest.raises(ConfigError) as raised:
        TimmBackbone(
            "vit_small_patch16_224", num_classes=3, pretrained=True, embed_dim=96, depth=4, num_heads=4
        )
    message = str(raised.value)
    assert "model.net.embed_dim=96, model.net.depth=4, model.net.num_heads=4" in message
    assert "model.net.pretrained=false" in message and "HF_HUB_OFFLINE" not in message
    # the pretrained size itself is no conflict: this one gets as far as the (offline) download
    with pytest.raises(UserError, match="HF_HUB_OFFLINE=1 is set"):
        TimmBackbone("vit_small_patch16_224", num_classes=3, pretrained=True, embed_dim=384, num_heads=6)


# --- no network: one message at once, no retries ------------------------------------------------


@pytest.fixture
def unreachable_hub(tmp_path, monkeypatch, caplog):
    """The hub at a port nothing listens on, an empty cache, and offline mode off: a machine
    without network as the libraries see it. Yields the log, where their retries would show."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("http_proxy", "https_proxy", "all_proxy"):  # no way round the dead endpoint
        monkeypatch.delenv(proxy, raising=False)
        monkeypatch.delenv(proxy.upper(), raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    caplog.set_level("DEBUG")
    return caplog


@pytest.mark.parametrize("kind", ["timm", "hf"])
def test_an_unreachable_hub_fails_at_once_without_retries(kind, unreachable_hub):
    with pytest.raises(UserError) as raised:
        if kind == "timm":
            TimmBackbone("vit_tiny_patch16_224", num_classes=3, pretrained=True, model_kwargs=TINY_TIMM)
        else:
            HFViT("google/vit-base-patch16-224-in21k", num_classes=3)
    message = str(raised.value)
    assert "the HuggingFace hub (http://127.0.0.1:9) cannot be reached" in message
    repo = (
        "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
        if kind == "timm"
        else "google/vit-base-patch16-224-in21k"
    )
    assert f"hf download {repo}" in message and "huggingface-cli" not in message
    assert ("model.net.checkpoint_path" if kind == "timm" else "model.net.name_or_path") in message
    tries = [
        r for r in unreachable_hub.records if r.name.startswith(("huggingface_hub", "transformers", "timm"))
    ]
    assert tries == []  # no download was attempted, so nothing was retried


def test_the_hub_probe_goes_where_requests_go(monkeypatch):
    """Behind a proxy the hub itself may be unreachable while downloads work: probe the proxy."""
    from vit_rpe.models.pretrained.hub import first_hop

    assert first_hop("https://huggingface.co") == ("huggingface.co", 443)
    assert first_hop("http://127.0.0.1:9") == ("127.0.0.1", 9)
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    monkeypatch.setenv("no_proxy", "localhost")
    assert first_hop("https://huggingface.co") == ("proxy.example", 3128)
    assert first_hop("https://localhost:8080") == ("localhost", 8080)
