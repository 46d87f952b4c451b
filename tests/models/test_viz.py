"""Plots of learned masks and attention maps, from a backbone and from a checkpoint."""

from __future__ import annotations

import pytest
import torch

from vit_rpe import viz
from vit_rpe.models import VisionTransformer

NET = dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=4)


def tiny(attention="softmax", rpe="general", **kwargs):
    torch.manual_seed(0)
    return VisionTransformer(**NET, attention=attention, rpe=rpe, **kwargs)


@pytest.mark.parametrize("attention,rpe,pool", [("softmax", "general", "cls"), ("performer", "exp", "mean")])
def test_attention_maps_are_the_layers_attention(attention, rpe, pool):
    model = tiny(attention, rpe, pool=pool)
    image = torch.rand(1, 8, 8)
    maps = viz.attention_maps(model, image)
    tokens = 16 + (pool == "cls")
    assert len(maps) == 2 and maps[0].shape == (4, tokens, tokens)
    for attn in maps:
        assert (attn >= 0).all()
        torch.testing.assert_close(attn.sum(-1), torch.ones(4, tokens))
    # Layer 0's map, by hand: the attention matrix of its kernel applied to LN(embed(image))
    with torch.no_grad():
        x = model.patch_embed(image[None]) + model.pos_embed
        if model.cls_token is not None:
            x = torch.cat([model.cls_token, x], 1)
        block = model.blocks[0]
        q, k, _ = block.attn.heads(block.norm1(x))
        expected = block.attn.kernel.attention_matrix(q, k, block.attn.rpe)[0]
    torch.testing.assert_close(maps[0], expected)
    assert model.training  # restored


def test_attention_map_reproduces_the_softmax_output():
    model = tiny("softmax", "poly").eval()
    layer = model.blocks[0].attn
    x = torch.randn(2, 17, 32)
    q, k, v = layer.heads(x)
    torch.testing.assert_close(
        layer.attention_map(x) @ v, layer.kernel(q, k, v, layer.rpe), rtol=1e-4, atol=1e-5
    )


def test_plots_are_written(tmp_path):
    model = tiny("linear", "poly")
    image = torch.rand(1, 8, 8)
    masks = viz.plot_rpe_masks(model, tmp_path / "masks.png")
    maps = viz.plot_attention_maps(model, image, tmp_path / "maps.png")
    for path in (masks, maps):
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
    assert viz.plot_rpe_masks(tiny("softmax", "none"), tmp_path / "none.png") is None
    assert viz.plot_attention_maps(tiny("softmax", "none", pool="mean"), image, tmp_path / "m.png").is_file()


def test_hydra_style_arguments():
    assert viz.hydra_style(["ckpt_path=a.ckpt", "out=o", "--query", "3"]) == [
        "--ckpt",
        "a.ckpt",
        "--out",
        "o",
        "--query",
        "3",
    ]


def test_cli_on_a_checkpoint(tmp_path):
    tasks = pytest.importorskip("vit_rpe.tasks")
    import lightning as L

    net = {"_target_": "vit_rpe.models.VisionTransformer", **NET, "attention": "performer", "rpe": "exp"}
    task = tasks.ImageClassifier(
        net=net, num_classes=10, optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}
    )
    with torch.no_grad():
        for block in task.net.blocks:
            block.attn.rpe.raw_rate.fill_(0.5)  # a visibly learned mask
    ckpt = tmp_path / "tiny.ckpt"
    torch.save(
        {
            "state_dict": task.state_dict(),
            "hyper_parameters": dict(task.hparams),
            "pytorch-lightning_version": L.__version__,
        },
        ckpt,
    )
    loaded = viz.load_backbone(ckpt)
    torch.testing.assert_close(loaded.blocks[0].attn.rpe.mask(), task.net.blocks[0].attn.rpe.mask())
    from PIL import Image

    Image.fromarray((torch.rand(12, 12) * 255).byte().numpy()).save(tmp_path / "img.png")
    assert (
        viz.main([f"ckpt_path={ckpt}", f"out={tmp_path / 'viz'}", "--image", str(tmp_path / "img.png")]) == 0
    )
    assert (tmp_path / "viz" / "rpe_masks.png").is_file()
    assert (tmp_path / "viz" / "attention_maps.png").is_file()
    with pytest.raises(Exception, match="--ckpt"):
        viz.load_backbone(tmp_path / "missing.ckpt")


def test_cli_bad_inputs_are_one_message(tmp_path, capsys):
    """An image given as --ckpt, an unreadable --image, a pretrained backbone: exit 1, one line."""
    from PIL import Image

    png = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(png)
    hf = tmp_path / "hf.ckpt"
    net = {"_target_": "vit_rpe.models.pretrained.HFViT", "name_or_path": "google/vit-base-patch16-224"}
    torch.save({"state_dict": {}, "hyper_parameters": {"net": net}}, hf)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    tasks = pytest.importorskip("vit_rpe.tasks")
    task = tasks.ImageClassifier(
        net={"_target_": "vit_rpe.models.VisionTransformer", **NET},
        num_classes=10,
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3},
    )
    ckpt = tmp_path / "tiny.ckpt"
    import lightning as L

    version = {"pytorch-lightning_version": L.__version__}
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams), **version}, ckpt)
    cases = {
        "x.png: it is a PNG image, not a checkpoint": ["--ckpt", str(png)],
        "viz draws the attention and RPE masks of the from-scratch models": ["--ckpt", str(hf)],
        "corrupt.png cannot be read as an image": ["--ckpt", str(ckpt), "--image", str(corrupt)],
    }
    for message, args in cases.items():
        with pytest.raises(SystemExit) as exited:
            viz.main(args)
        assert exited.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
