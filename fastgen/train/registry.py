"""The model registry of the CLI and the training loops: name -> class in fastgen.models.

Classes are imported lazily by name, so a build without some model still trains the others and
says clearly which one is missing. A model can also be given as "package.module:ClassName" (a
user's own AutoregressiveModel subclass, or any class with the same interface). Families:
  "ar"   autoregressive: exact log_prob(x) (N,) nats; trained on -log_prob
  "vae"  elbo(x, generator) / log_prob(x, k) (IWAE) / encode(x); trained on -elbo
  "gan"  train_step(real, opt_d, opt_g, ...) / sample(n) / features(x); no likelihood
"""
import importlib
from dataclasses import dataclass, field


class ModelError(ValueError):
    """Unknown model name, a model missing from this build, or bad model options."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    class_name: str
    family: str                    # "ar" | "vae" | "gan"
    kwargs: dict = field(default_factory=dict)  # defaults, overridable with --set key=value
    module: str = "fastgen.models"
    epochs: int = 30               # defaults sized for digits on a 2-core CPU (minutes); the
                                   # epoch with the best validation loss is kept, so extra epochs cost
                                   # time only
    batch_size: int = 64
    lr: float = 1e-3


MODELS = {s.name: s for s in [
    ModelSpec("independent-bernoulli", "IndependentBernoulli", "ar", epochs=30, lr=0.1),  # = the MLE
    ModelSpec("markov-chain", "MarkovChain", "ar", epochs=30, lr=0.1),
    ModelSpec("fvsbn", "FVSBN", "ar", epochs=60, lr=1e-2),
    ModelSpec("nade", "NADE", "ar", epochs=40),
    ModelSpec("made", "MADE", "ar", epochs=40),
    ModelSpec("pixelcnn", "PixelCNN", "ar", epochs=12),  # digits: best validation epoch ~8
    ModelSpec("gated-pixelcnn", "GatedPixelCNN", "ar", epochs=12),
    ModelSpec("pixelrnn-row", "PixelRNN", "ar", {"kind": "row"}, epochs=40),  # still improving at 12
    ModelSpec("pixelrnn-diagonal", "PixelRNN", "ar", {"kind": "diagonal"}, epochs=40),
    ModelSpec("vae", "VAE", "vae", {"latent_dim": 16, "hidden": 256, "arch": "mlp"}, epochs=60),
    ModelSpec("dcgan", "DCGAN", "gan", {"latent_dim": 32, "width": 32}, epochs=60, lr=2e-4),
]}


def get_spec(name):
    """The ModelSpec of a registry name or of "module:Class" (family from its interface)."""
    if not isinstance(name, str) or not name:
        raise ModelError(f"model must be a name; got {name!r}")
    if name in MODELS:
        return MODELS[name]
    if ":" in name:
        module, _, class_name = name.partition(":")
        cls = _import(module, class_name, name)
        family = "gan" if hasattr(cls, "train_step") else "vae" if hasattr(cls, "elbo") else "ar"
        return ModelSpec(name, class_name, family, module=module)
    raise ModelError(f"unknown model {name!r}; known models: {', '.join(MODELS)} "
                     "(or package.module:ClassName)")


def _import(module, class_name, name):
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(f"model {name!r}: cannot import {module} ({exc})") from exc
    cls = getattr(mod, class_name, None)
    if cls is None:
        raise ModelError(f"model {name!r} is not available in this build ({module}.{class_name} "
                         "does not exist)")
    return cls


def model_class(spec):
    return _import(spec.module, spec.class_name, spec.name)


def build_model(spec, input_shape, num_levels, overrides=None):
    """Instantiate spec's class for data of shape (C, H, W) and `num_levels` levels (None: grey)."""
    kwargs = dict(spec.kwargs)
    if spec.family == "ar":
        kwargs["num_levels"] = num_levels or 2
    elif spec.family == "vae":
        if "decoder" not in (overrides or {}):
            kwargs["decoder"] = ("gaussian" if num_levels is None else
                                 "bernoulli" if num_levels == 2 else "categorical")
        if num_levels is not None and num_levels > 2:
            kwargs["num_levels"] = num_levels
    kwargs.update(overrides or {})
    cls = model_class(spec)
    try:
        return cls(input_shape=tuple(input_shape), **kwargs), kwargs
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model {spec.name!r}: bad options {kwargs}: {exc}") from exc
