"""The model registry of the CLI and the training loops: name -> class in fastgen.models, and the
model's family (fastgen.train.families: how it trains and scores).

Classes are imported lazily by name, so a build without some model still trains the others and
says clearly which one is missing.

Trust: a checkpoint is data, never code. A model name read from a checkpoint must be a registry
name (`get_spec`); nothing named in a file is ever imported. A user's own class
("package.module:ClassName") is imported only when the user typed it on the command line
(`user_spec`), and only a subclass of a family's model base (AutoregressiveModel, VAE, DCGAN) is
instantiated; a checkpoint of such a run is loaded only when the user passes that same name again.
"""
import importlib
from dataclasses import dataclass, field

from fastgen.train.families import FAMILIES, get_family


class ModelError(ValueError):
    """Unknown model name, a model missing from this build, or bad model options."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    class_name: str
    family: type                   # a class of fastgen.train.families (or its name in FAMILIES)
    kwargs: dict = field(default_factory=dict)  # defaults, overridable with --set key=value
    module: str = "fastgen.models"
    epochs: int = 30               # defaults sized for digits on a 2-core CPU (minutes); the
                                   # epoch with the best validation loss is kept, so extra epochs cost
                                   # time only
    batch_size: int = 64
    lr: float = 1e-3
    fixed: tuple = ()              # kwargs that define the registry name (--set may not change them)

    def __post_init__(self):
        object.__setattr__(self, "family", get_family(self.family))  # a name: from the fixed table


MODELS = {s.name: s for s in [
    ModelSpec("independent-bernoulli", "IndependentBernoulli", "ar", epochs=30, lr=0.1),  # = the MLE
    ModelSpec("markov-chain", "MarkovChain", "ar", epochs=30, lr=0.1),
    ModelSpec("fvsbn", "FVSBN", "ar", epochs=60, lr=1e-2),
    ModelSpec("nade", "NADE", "ar", epochs=40),
    ModelSpec("made", "MADE", "ar", epochs=40),
    ModelSpec("pixelcnn", "PixelCNN", "ar", epochs=12),  # digits: best validation epoch ~8
    ModelSpec("gated-pixelcnn", "GatedPixelCNN", "ar", epochs=12),
    ModelSpec("pixelrnn-row", "PixelRNN", "ar", {"kind": "row"}, epochs=40, fixed=("kind",)),  # still improving at 12
    ModelSpec("pixelrnn-diagonal", "PixelRNN", "ar", {"kind": "diagonal"}, epochs=40, fixed=("kind",)),
    ModelSpec("vae", "VAE", "vae", {"latent_dim": 16, "hidden": 256, "arch": "mlp"}, epochs=60),
    ModelSpec("dcgan", "DCGAN", "gan", {"latent_dim": 32, "width": 32}, epochs=60, lr=2e-4),
]}
# Options the data decides (the number of pixel levels): --set may not contradict the data.
DATA_KWARGS = ("num_levels",)


def is_user_model(name):
    return isinstance(name, str) and ":" in name


def get_spec(name):
    """The ModelSpec of a registry name. Safe for names read from a file: imports nothing but
    fastgen.models."""
    if not isinstance(name, str) or not name:
        raise ModelError(f"model must be a name; got {name!r}")
    if name in MODELS:
        return MODELS[name]
    if is_user_model(name):
        raise ModelError(f"model {name!r} is not a fastgen model; a checkpoint of your own class loads only "
                         f"when you pass --model {name} on the command line")
    raise ModelError(f"unknown model {name!r}; known models: {', '.join(MODELS)} "
                     "(or package.module:ClassName)")


def user_spec(name):
    """The ModelSpec of a name the user typed: a registry name, or "package.module:ClassName"
    naming a subclass of fastgen's AutoregressiveModel, VAE or DCGAN (family from the base)."""
    if not is_user_model(name):
        return get_spec(name)
    module, _, class_name = name.partition(":")
    if not module or not class_name.isidentifier():
        raise ModelError(f"model {name!r}: expected package.module:ClassName")
    cls = _import(module, class_name, name)
    family = next((f for f in FAMILIES.values() if isinstance(cls, type) and issubclass(cls, f.model_base())), None)
    if family is None:
        raise ModelError(f"model {name!r} is not a subclass of fastgen.models.AutoregressiveModel, VAE or "
                         "DCGAN; only those are instantiated")
    return ModelSpec(name, class_name, family, module=module)


def resolve_spec(stored_name, user_model=None):
    """The spec for a checkpoint whose model is `stored_name`: a registry name, or a user's class
    only if the user passed the same name (`user_model`, from the command line)."""
    if user_model is not None and user_model != stored_name:
        raise ModelError(f"the checkpoint holds a {stored_name!r} run, not {user_model!r}")
    if is_user_model(stored_name) and user_model == stored_name:
        return user_spec(user_model)
    return get_spec(stored_name)


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


def check_overrides(spec, overrides):
    """Refuse --set options that contradict the registry name or the data."""
    for key in spec.fixed:
        if key in overrides and overrides[key] != spec.kwargs[key]:
            raise ModelError(f"model {spec.name!r} has {key}={spec.kwargs[key]!r}; --set {key}="
                             f"{overrides[key]!r} would be another model (choose that model's name instead)")
    for key in DATA_KWARGS:
        if key in overrides:
            raise ModelError(f"--set {key}: the data decides the number of pixel levels (use --levels K or "
                             "--binarize)")


def build_model(spec, input_shape, num_levels, overrides=None):
    """Instantiate spec's class for data of shape (C, H, W) and `num_levels` levels (None: grey)."""
    overrides = dict(overrides or {})
    kwargs = dict(spec.kwargs)
    kwargs.update(spec.family.data_kwargs(num_levels, overrides))
    for key in DATA_KWARGS:  # a stored kwargs dict holds the data's value: it must agree
        if key in overrides and key in kwargs and overrides[key] != kwargs[key]:
            raise ModelError(f"model {spec.name!r}: {key}={overrides[key]!r} does not fit data with "
                             f"{kwargs[key]} levels")
    kwargs.update(overrides)
    cls = model_class(spec)
    _check_memory(cls, input_shape, kwargs, spec.name)
    try:
        return cls(input_shape=tuple(input_shape), **kwargs), kwargs
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model {spec.name!r}: bad options {kwargs}: {exc}") from exc
    except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        text = str(exc).strip()
        if isinstance(exc, MemoryError) or "allocate" in text or "out of memory" in text.lower():
            why = "out of memory" + (f" ({text[text.find('tried to allocate'):].split('.')[0]})"
                                     if "tried to allocate" in text else "")
        else:
            why = text.splitlines()[0][:200] if text else type(exc).__name__
        raise ModelError(f"model {spec.name!r} with {kwargs} cannot be built: {why}") from None


def _available_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_memory(cls, input_shape, kwargs, name):
    """Build the model on the meta device (no memory) and refuse sizes whose weights, gradients
    and Adam state (4 copies) exceed the memory available: a huge --set value would otherwise be
    killed by the OOM killer or swap the machine to a halt. Skipped if the model cannot be built
    on meta."""
    import torch

    try:
        with torch.device("meta"):
            probe = cls(input_shape=tuple(input_shape), **kwargs)
        need = 4 * sum(p.numel() * p.element_size() for p in probe.parameters())
    except Exception:  # noqa: BLE001  (bad options are reported by the real build)
        return
    have = _available_bytes()
    if have is not None and need > have:
        raise ModelError(f"model {name!r} with {kwargs} needs about {need / 2**30:.1f} GiB for weights, "
                         f"gradients and Adam state; {have / 2**30:.1f} GiB of memory is available")
