"""SUPIR as an MLflow pyfunc model: ``mlflow.pyfunc.load_model(uri).predict(df)`` restores images.

The registered model of each training stage (pipelines/train.py ``publish``) is saved with
:func:`save_pyfunc`: an MLmodel with the ``python_function`` flavour and a signature, the SUPIR
checkpoint folder (model/checkpoint.py) as its artifact ``supir``, and the restore options as
the model config. So the MLflow UI shows the registered model's schema, and::

    import mlflow, pandas as pd
    model = mlflow.pyfunc.load_model("models:/supir-demo@champion")
    out = model.predict(pd.DataFrame({"image": [open("photo.jpg", "rb").read()]}))
    open("restored.png", "wb").write(out["restored"][0])

Input: a DataFrame with ``image`` (encoded image bytes, any format Pillow reads) and optionally
``caption`` (prepended to the positive prompt). Output: ``restored`` (PNG bytes), ``width``,
``height``. Restore options (steps, min_size, device, ...) are the model config: the values it
was registered with, changed at load time by ``load_model(uri, model_config={"min_size": 512})``.
catalog.registry.resolve_model_path still finds the checkpoint folder inside this layout.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any


def _silent(*args, **kwargs) -> None:
    """A ``warnings.showwarning`` that shows nothing."""


with warnings.catch_warnings():  # mlflow.pyfunc warns on import about its own internal type hints
    warnings.simplefilter("ignore", UserWarning)
    warnings.showwarning = _silent  # MLflow resets the filter to "once" inside; restored on exit
    import mlflow.pyfunc

ARTIFACT = "supir"
REQUIREMENTS = ["torch", "torchvision", "diffusers", "transformers", "pillow", "pandas", "numpy", "safetensors",
                "mlflow"]


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image"), ColSpec("string", "caption", required=False)]),
        outputs=Schema([ColSpec("binary", "restored"), ColSpec("long", "width"), ColSpec("long", "height")]),
    )


# MLflow warns at class creation that predict has no type hints (they would infer a signature); the
# signature is given explicitly in save_pyfunc
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    warnings.showwarning = _silent

    class SupirPyfunc(mlflow.pyfunc.PythonModel):
        """Loads the checkpoint once per process; ``predict`` restores each row's image."""

        def load_context(self, context) -> None:
            from catalog.config import from_dict
            from model.restoration import Restoration
            from stages.restore import RestoreConfig

            options = dict(context.model_config or {})
            for old in RestoreConfig.RENAMED:  # a model registered before `resources:` records actors and
                options.pop(old, None)         # num_gpus_per_actor: Ray settings that a pyfunc never used
            options["model"] = context.artifacts[ARTIFACT]
            self.cfg = from_dict(RestoreConfig, options, prefix="model_config")
            self.restoration = Restoration.from_checkpoint(self.cfg.model, self.cfg, self.cfg.device, self.cfg.dtype,
                                                           self.cfg.prior)

        def predict(self, context, model_input, params=None):
            import pandas as pd

            from catalog import codec

            captions = model_input["caption"] if "caption" in model_input else [None] * len(model_input)
            out: dict[str, list[Any]] = {"restored": [], "width": [], "height": []}
            for data, caption in zip(model_input["image"], captions):
                data = bytes(data)
                key = hashlib.sha256(data).hexdigest()[:16]  # the noise seed follows the image, not its row
                decoded = codec.decode(data, self.cfg.max_pixels)  # a DecodeError names what is wrong
                img = self.restoration.restore(decoded.image, key, caption if isinstance(caption, str) else None)
                out["restored"].append(codec.encode_png(img))
                out["width"].append(img.width)
                out["height"].append(img.height)
            return pd.DataFrame(out)


def save_pyfunc(checkpoint: str | Path, path: str | Path, options: dict[str, Any]) -> Path:
    """Save ``checkpoint`` (a SUPIR folder) as a pyfunc model at ``path``; ``options``: RestoreConfig
    fields without ``model`` (the model config)."""
    options = {k: v for k, v in options.items() if k != "model"}
    with warnings.catch_warnings():  # "no input example": one would make MLflow run predict at save time
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=str(Path(__file__).with_name("restore_pyfunc_model.py")),  # from code: no pickle
            artifacts={ARTIFACT: str(checkpoint)},
            signature=signature(),
            model_config=options,
            pip_requirements=REQUIREMENTS,  # listed: inferring them would load the model in a subprocess
        )
    return Path(path)
