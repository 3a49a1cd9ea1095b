"""A user's own data in the npz format fedweave reads (``data.dataset: npz``): x, y and a
client id per example (``partition.kind: natural`` keeps those clients), plus a test split.

Eight "sites", each with its own mean shift: a natural, feature-skewed federation.
"""

import numpy as np

rng = np.random.default_rng(0)
sites, per_site, dim, classes = 8, 120, 16, 4
centres = rng.normal(0, 0.5, size=(classes, dim))


def draw(n_per_site):
    x, y, client = [], [], []
    for site in range(sites):
        shift = rng.normal(0, 1.0, size=dim)
        labels = rng.integers(0, classes, size=n_per_site)
        x.append(centres[labels] + shift + rng.normal(0, 1.0, size=(n_per_site, dim)))
        y.append(labels)
        client.append(np.full(n_per_site, site))
    return np.concatenate(x).astype(np.float32), np.concatenate(y), np.concatenate(client)


x, y, client_id = draw(per_site)
x_test, y_test, _ = draw(30)
np.savez("mydata.npz", x=x, y=y, client_id=client_id, x_test=x_test, y_test=y_test)
print(f"wrote mydata.npz: {len(x)} training examples at {sites} sites, {len(x_test)} test examples")
