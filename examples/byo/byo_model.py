"""A user's own model: ``model.name: byo_model:make_net`` (the current folder is importable).

fedweave calls ``make_net(input_shape, num_classes, width=..., **model.kwargs)``.
"""

from torch import nn


def make_net(input_shape, num_classes, width=16, units=64, **_):
    features = 1
    for d in input_shape:
        features *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(features, units), nn.LayerNorm(units), nn.ReLU(),
                         nn.Linear(units, num_classes))
