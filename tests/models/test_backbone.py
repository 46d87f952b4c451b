"""The backbone interface (models/backbone.py): every backbone we ship speaks it, the same way.

Parametrised over the from-scratch ViT (two layouts), a tiny timm ViT built without download
and a tiny HuggingFace ViT saved locally by the test.
"""

from __future__ import annotations

import pytest
import torch
from timm.models import group_parameters
from torch import nn

from tests.helpers import GREY_8X8, save_tiny_hf_vit
from vit_rpe.models import VisionTransformer
from vit_rpe.models.backbone import Backbone, PretrainedBackbone, layer_ids, missing_methods
from vit_rpe.models.pretrained import HFViT, TimmBackbone
from vit_rpe.tasks import ImageClassifier
from vit_rpe.utils.errors import ConfigError

DEPTH = 2


def build(kind: str, hf_folder) -> nn.Module:
    torch.manual_seed(0)
    if kind == "vit":
        return VisionTransformer(8, 2, in_chans=1, num_classes=3, embed_dim=16, depth=DEPTH, num_heads=2)
    if kind == "vit_mean_conv_stem_exp":
        return VisionTransformer(
            8, 2, 1, 3, 16, DEPTH, 2, patch_embed="conv_stem", pos_embed="sincos2d", pool="mean", rpe="exp"
        )
    if kind == "timm":
        return TimmBackbone("vit_tiny_patch16_224", num_classes=3, **GREY_8X8)
    return HFViT(str(hf_folder), num_classes=3, in_chans=1)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return save_tiny_hf_vit(tmp_path_factory.mktemp("hf_tiny"), image_size=8)


@pytest.fixture(params=["vit", "vit_mean_conv_stem_exp", "timm", "hf"])
def net(request, hf_folder) -> nn.Module:
    return build(request.param, hf_folder).eval()


def images_for(net: nn.Module) -> torch.Tensor:
    return torch.randn(2, *net.data_config()["input_size"])


def test_every_backbone_implements_the_interface(net):
    assert isinstance(net, Backbone) and missing_methods(net) == []
    assert isinstance(net, PretrainedBackbone) == isinstance(net, (TimmBackbone, HFViT))


def test_forward_is_the_features_then_the_head(net):
    x = images_for(net)
    logits = net(x)
    assert logits.shape == (2, 3)
    features = net.forward_features(x)
    torch.testing.assert_close(net.forward_head(features), logits)
    pooled = net.forward_head(features, pre_logits=True)
    assert pooled.shape == (2, net.get_classifier().in_features)
    torch.testing.assert_close(net.get_classifier()(pooled), logits)


def test_reset_classifier_gives_a_new_head_of_the_size_asked(net):
    net.reset_classifier(5)
    assert net(images_for(net)).shape == (2, 5) and net.get_classifier().out_features == 5
    head = {id(p) for p in net.get_classifier().parameters()}
    assert head and head <= {id(p) for p in net.parameters()}


def test_layer_ids_number_stem_blocks_and_head(net):
    ids = layer_ids(net)
    names = {name for name, _ in net.named_parameters()}
    assert set(ids) == names
    assert sorted(set(ids.values())) == list(range(DEPTH + 2))  # stem, each block, head
    head = {
        name for name, p in net.named_parameters() if any(p is q for q in net.get_classifier().parameters())
    }
    assert {ids[name] for name in head} == {DEPTH + 1}
    coarse = group_parameters(net, net.group_matcher(coarse=True), reverse=True)
    assert set(coarse) == names and len(set(coarse.values())) <= DEPTH + 2


def test_no_weight_decay_names_parameters_of_the_backbone(net):
    """Names as ``named_parameters`` gives them (timm's lists may name tokens a model lacks)."""
    names = {name for name, _ in net.named_parameters()}
    assert {
        name for name in names if name.endswith(("pos_embed", "position_embeddings"))
    } <= net.no_weight_decay()


def test_data_config_says_what_the_backbone_takes_in_timms_words(net):
    config = net.data_config()
    assert set(config) <= {"input_size", "mean", "std"} and len(config["input_size"]) == 3
    channels = config["input_size"][0]
    assert all(len(config[key]) == channels for key in ("mean", "std") if key in config)
    assert net(images_for(net)).shape == (2, 3)


def test_a_module_without_the_interface_is_refused_naming_what_it_lacks():
    with pytest.raises(ConfigError, match=r"torch.nn.modules.linear.Linear is not a backbone: it lacks "):
        ImageClassifier(nn.Linear(4, 3), num_classes=3, optimizer={"_target_": "torch.optim.SGD", "lr": 0.1})
