"""Attribute conditioning: the embedding's unknown row and interpolation, the U-Net's use of it, checkpoints that keep the schema."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import random_model
from lungddpm import LungDDPM, ModelConfig, load_model, save_checkpoint
from lungddpm.errors import ConfigError, InputError
from lungddpm.layout.attributes import NoduleAttributes
from lungddpm.model.conditioning import AttributeEmbedding, attribute_vector, unknown_vector

pytestmark = pytest.mark.usefixtures("one_thread")
SCHEMA = ("texture", "calcification")


def test_attribute_vector_orders_by_schema_and_marks_unknown_nan():
    vector = attribute_vector(SCHEMA, NoduleAttributes(calcification=6, margin=2))
    assert math.isnan(vector[0]) and vector[1] == 6.0
    assert all(math.isnan(v) for v in attribute_vector(SCHEMA, None))
    assert torch.isnan(unknown_vector(torch.ones(3, 2))).all()


def test_embedding_rows_unknown_and_fractional_codes():
    torch.manual_seed(0)
    embed = AttributeEmbedding(SCHEMA, 8)
    texture, calcification = embed.tables
    out = embed(torch.tensor([[1.0, float("nan")], [2.5, 3.0], [float("nan"), float("nan")]]))
    torch.testing.assert_close(out[0], texture.weight[1] + calcification.weight[0])
    torch.testing.assert_close(out[1], 0.5 * (texture.weight[2] + texture.weight[3]) + calcification.weight[3])
    torch.testing.assert_close(out[2], texture.weight[0] + calcification.weight[0])
    with pytest.raises(InputError, match=r"\(B, 2\)"):
        embed(torch.ones(2, 3))


def test_unet_output_depends_on_attributes_and_none_means_unknown():
    model = random_model(attributes=SCHEMA, in_channels=2, profile="released-patch")
    x, cond, t = torch.randn(2, 1, 16, 16, 16), -torch.ones(2, 1, 16, 16, 16), torch.tensor([3, 3])
    a = torch.tensor([[1.0, 6.0], [5.0, 6.0]])
    with torch.no_grad():
        eps = model.predict_noise(x, cond, t, a)
        assert (eps[0] - eps[1]).abs().max() > 1e-3  # same x, other texture: another prediction
        torch.testing.assert_close(model.predict_noise(x, cond, t), model.predict_noise(x, cond, t, unknown_vector(a)))


def test_models_without_attributes_keep_their_parameters_and_refuse_attributes():
    plain = LungDDPM(ModelConfig(image_size=16, num_channels=32, channel_mult=(1, 2), attention_resolutions=(8,)))
    assert not [k for k in plain.denoise_fn.state_dict() if "attribute" in k]
    with pytest.raises(InputError, match="takes no nodule attributes"):
        plain.predict_noise(torch.zeros(1, 1, 16, 16, 16), -torch.ones(1, 2, 16, 16, 16), torch.tensor([1]),
                            torch.ones(1, 1))
    with pytest.raises(ConfigError, match="LIDC characteristic"):
        ModelConfig(attributes=("colour",))


def test_checkpoint_keeps_schema_guidance_and_weights(tmp_path):
    model = random_model(attributes=SCHEMA, guidance_scale=2.5, in_channels=2, profile="released-patch")
    loaded = load_model(save_checkpoint(tmp_path / "m.pt", model), weights="model")
    assert loaded.config.attributes == SCHEMA and loaded.config.guidance_scale == 2.5
    assert all(torch.equal(v, loaded.denoise_fn.state_dict()[k]) for k, v in model.denoise_fn.state_dict().items())


def test_attributes_are_painted_inside_the_nodule_only():
    model = random_model(attributes=SCHEMA, in_channels=2, profile="released-patch")
    net = model.denoise_fn
    nodule = -torch.ones(1, 1, 16, 16, 16)
    nodule[..., 4:9, 5:10, 6:12] = 1.0  # the last input channel is the nodule's (+1 inside, −1 outside)
    x = torch.cat([torch.randn(1, 1, 16, 16, 16), nodule], dim=1)
    described = net.attribute_embed(torch.tensor([[1.0, 6.0]]))
    with torch.no_grad():
        painted = net.paint_attributes(x, described)
    inside = (nodule[0, 0] > 0).expand_as(painted[0])
    assert painted[0][~inside].abs().max() == 0  # nothing outside the nodule
    expected = (described @ net.attribute_paint.weight.T + net.attribute_paint.bias)[0]  # the projection, per channel
    torch.testing.assert_close(painted[0, :, 6, 7, 8], expected.detach())
    # a request changes the prediction more inside the nodule than outside it (the painted, local path)
    t = torch.tensor([3])
    with torch.no_grad():
        a = model.predict_noise(x[:, :1], nodule, t, torch.tensor([[1.0, 6.0]]))
        b = model.predict_noise(x[:, :1], nodule, t, torch.tensor([[5.0, 6.0]]))
    change = (a - b).abs()[0, 0]
    assert change[nodule[0, 0] > 0].mean() > 2 * change[nodule[0, 0] < 0].mean()
