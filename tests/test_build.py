"""The config boundary both entry points share: a backbone gets only keys it takes, and a key it
cannot take is one message that says which keys, who set them and what to do."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from tests.conftest import CONF_DIR, FAST
from tests.helpers import save_tiny_hf_vit
from vit_rpe.build import check_backbone_config
from vit_rpe.train import train
from vit_rpe.utils.errors import ConfigError
from vit_rpe.utils.run import user_error_of

# The FAST trainer settings; the model.net sizes there belong to the from-scratch ViT.
TRAINER_FAST = tuple(o for o in FAST if not o.startswith("model."))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return save_tiny_hf_vit(tmp_path_factory.mktemp("hf_tiny"))


def config_error_of(train_config, *overrides: str) -> str:
    """The message of the ConfigError that train() ends with."""
    with pytest.raises(Exception) as raised:
        train(train_config(*TRAINER_FAST, *overrides, fast=False))
    error = user_error_of(raised.value)
    assert isinstance(error, ConfigError), raised.value
    return str(error)


def test_timm_with_a_study_variant_names_the_key_it_cannot_take(train_config):
    message = config_error_of(train_config, "variant=linear_patch1", "model=timm_vit")
    # patch_embed is the from-scratch ViT's; patch_size passes through to timm
    assert (
        "model=timm_vit" in message and "model.net.patch_embed (set by variant/linear_patch1.yaml)" in message
    )
    assert "patch_size" not in message.split("takes:")[0]
    assert "~model.net.patch_embed" in message  # the fix, as a command-line override


def test_hf_vit_with_a_timm_experiment_names_every_key_it_cannot_take(train_config, hf_folder):
    experiment = "mnist_vit_small_pretrained_vs_scratch"
    message = config_error_of(
        train_config, f"experiment={experiment}", "model=hf_vit", f"model.net.name_or_path={hf_folder}"
    )
    refused = message.split(f" (set by experiment/{experiment}.yaml)")[0]
    for key in ("name", "pretrained", "img_size", "patch_size", "drop_path_rate"):
        assert f"model.net.{key}," in refused or refused.endswith(f"model.net.{key}")
    assert "model=hf_vit" in message


def test_a_key_set_on_the_command_line_is_named_as_such(train_config):
    message = config_error_of(
        train_config, "model=timm_vit", "model.net.pretrained=false", "+model.net.attention=performer"
    )
    assert "model.net.attention (set by the command line: +model.net.attention=performer)" in message


def test_keys_from_a_config_group_are_traced_to_its_option(train_config):
    message = config_error_of(
        train_config, "model=hf_vit", "+model/net=small", "model.net.name_or_path=/nonexistent"
    )
    assert "(set by model/net/small.yaml)" in message


@pytest.mark.parametrize("model", ["timm_vit", "hf_vit"])
def test_rpe_with_a_pretrained_model_is_the_message_even_with_other_bad_keys(train_config, model):
    message = config_error_of(train_config, "experiment=quickstart", f"model={model}", "rpe=exp")
    assert message.startswith("rpe=exp works with the from-scratch ViT only")
    assert f"model={model}" in message


def test_timm_takes_the_size_keys_of_a_from_scratch_network(train_config):
    cfg = train_config(
        "model=timm_vit",
        "+model/net=seed003",
        "~model.net.pool",
        "~model.net.patch_embed",
        "model.net.pretrained=false",
        "model.net.img_size=8",
        fast=False,
    )
    check_backbone_config(cfg.model.net)
    net = instantiate(cfg.model.net).model
    assert net.embed_dim == 128 and len(net.blocks) == 4 and net.patch_embed.patch_size == (2, 2)
    assert net.blocks[0].attn.num_heads == 8 and net.blocks[0].mlp.fc1.out_features == 512


@pytest.mark.parametrize(
    "choice",
    [
        *(f"model={m}" for m in ("vit", "performer", "linear", "timm_vit", "hf_vit")),
        *(f"experiment={e.stem}" for e in sorted((CONF_DIR / "experiment").glob("*.yaml"))),
    ],
)
def test_every_shipped_model_and_experiment_passes_the_check(train_config, choice):
    cfg = train_config(choice, fast=False)
    check_backbone_config(cfg.model.net)


def test_a_checkpoint_saved_before_partial_factories_builds_as_one_saved_after():
    """docs/configs.md, Key moves: optimizer and scheduler configs of older checkpoints lack
    ``_partial_: true``; the task would refuse them."""
    from vit_rpe.build import with_partial_factories
    from vit_rpe.tasks import ImageClassifier

    saved = {
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": 1e-3},
        "scheduler": {"_target_": "vit_rpe.tasks.optim.warmup_cosine", "warmup_epochs": 1},
    }
    upgraded = with_partial_factories(dict(saved))
    assert upgraded["optimizer"] == {**saved["optimizer"], "_partial_": True}
    assert upgraded["scheduler"]["_partial_"] is True and "_partial_" not in saved["optimizer"]
    assert with_partial_factories({"optimizer": None}) == {"optimizer": None}
    from vit_rpe.models import VisionTransformer

    net = VisionTransformer(
        img_size=8, in_chans=1, num_classes=3, patch_size=4, embed_dim=8, depth=1, num_heads=2
    )
    with pytest.raises(ConfigError, match=r"model\.optimizer .* _partial_: true"):
        ImageClassifier(net, num_classes=3, optimizer=saved["optimizer"])
    ImageClassifier(net, num_classes=3, optimizer=upgraded["optimizer"])  # builds
