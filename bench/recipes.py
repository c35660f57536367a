"""The binarized-MNIST recipes: one per row of the published table (bench/reproduce.py trains
them; bench/bench_models.py times their train step). Architecture and objective follow the
paper named in `source`; optimiser and schedule are what fits a 2-core CPU (Adam, with the
learning rate decayed on a validation plateau and early stopping on the 10k validation split),
said per recipe where it departs from the paper.

Fields: model (class name in fastgen.models), kwargs, paper (test NLL, nats), target (the
issue's floor), objective ("nll" exact; "elbo"; "iwae" with iwae_k samples), ensemble (MADE
masks averaged at test time), lr, batch_size, max_epochs, patience (epochs without a better
validation NLL before stopping), decay (lr factor on a plateau of decay_patience epochs).
"""

RECIPES = {
    "fvsbn": dict(
        model="FVSBN", kwargs={}, paper=97.45, target=97.5, objective="nll",
        source="Larochelle & Murray 2011 (NADE), Table 1: FVSBN on binarized MNIST",
        lr=3e-3, batch_size=100, max_epochs=200, patience=10, decay=0.3, decay_patience=3),
    "nade": dict(
        model="NADE", kwargs={"hidden_size": 500}, paper=88.86, target=88.9, objective="nll",
        source="Larochelle & Murray 2011 / Uria et al. 2016: NADE, 500 hidden units, fixed order",
        lr=1e-3, batch_size=64, max_epochs=400, patience=15, decay=0.3, decay_patience=4),
    "made": dict(
        model="MADE", kwargs={"hidden_sizes": [8000]}, paper=88.40, target=88.5, objective="nll",
        source="Germain et al. 2015 (MADE), Table 6: 1 hidden layer of 8000 units, 1 mask",
        lr=1e-3, batch_size=100, max_epochs=300, patience=15, decay=0.3, decay_patience=4),
    "made-ensemble": dict(
        model="MADE", kwargs={"hidden_sizes": [8000, 8000], "num_masks": 32}, paper=86.64,
        target=86.7, objective="nll", ensemble=32,
        source="Germain et al. 2015 (MADE), Table 6: 2 hidden layers, 32 masks (connectivity-agnostic)",
        lr=5e-4, batch_size=100, max_epochs=600, patience=30, decay=0.3, decay_patience=8),
    "vae": dict(
        model="VAE", kwargs={"latent_dim": 50, "hidden": 200, "arch": "mlp", "decoder": "bernoulli"},
        paper=86.76, target=87.0, objective="elbo",
        source="Burda et al. 2016 (IWAE), Table 1: VAE, 1 stochastic layer (50), 2x200 hidden, k=1",
        lr=1e-3, batch_size=100, max_epochs=3280, patience=100, decay=0.5, decay_patience=30),
    "iwae": dict(
        model="VAE", kwargs={"latent_dim": 50, "hidden": 200, "arch": "mlp", "decoder": "bernoulli"},
        paper=84.78, target=85.0, objective="iwae", iwae_k=50,
        source="Burda et al. 2016 (IWAE), Table 1: IWAE k=50, 1 stochastic layer (50), 2x200 hidden",
        lr=1e-3, batch_size=100, max_epochs=3280, patience=100, decay=0.5, decay_patience=30),
    "pixelcnn": dict(
        model="PixelCNN", kwargs={"hidden_channels": 64, "num_layers": 15}, paper=81.30, target=82.5,
        objective="nll",
        source="van den Oord et al. 2016 (PixelRNN), Table 4: PixelCNN on binarized MNIST",
        lr=1e-3, batch_size=64, max_epochs=60, patience=5, decay=0.3, decay_patience=2),
    "pixelrnn-row": dict(
        model="PixelRNN", kwargs={"kind": "row", "hidden_channels": 32, "num_layers": 7},
        paper=80.54, target=82.0, objective="nll",
        source="van den Oord et al. 2016 (PixelRNN), Table 4: Row LSTM on binarized MNIST",
        lr=1e-3, batch_size=64, max_epochs=60, patience=5, decay=0.3, decay_patience=2),
    "pixelrnn-diagonal": dict(
        model="PixelRNN", kwargs={"kind": "diagonal", "hidden_channels": 16, "num_layers": 7},
        paper=79.20, target=81.0, objective="nll",
        source="van den Oord et al. 2016 (PixelRNN), Table 4: Diagonal BiLSTM, 7 layers, h=16",
        lr=1e-3, batch_size=64, max_epochs=60, patience=5, decay=0.3, decay_patience=2),
}


def build(name, input_shape=(1, 28, 28)):
    """The recipe's model, freshly initialised (binary pixels)."""
    import fastgen.models as models

    r = RECIPES[name]
    kwargs = dict(r["kwargs"])
    if "hidden_sizes" in kwargs:
        kwargs["hidden_sizes"] = tuple(kwargs["hidden_sizes"])
    return getattr(models, r["model"])(input_shape=tuple(input_shape), **kwargs)
