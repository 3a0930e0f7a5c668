"""Train SUPIR on Ray Train: stage 1 (E_dr), then stage 2 (adaptor + connectors).

    python pipelines/train.py --config configs/demo.yaml ["stages=[train_encoder]"] [key.path=value ...]
    ray job submit --address http://<head>:8265 --working-dir . -- python pipelines/train.py -c configs/sdxl.yaml

The run config (pipelines/config.py) is the one every entry point loads; this command trains the
training stages its ``stages`` list names (both by default), each resumed from its latest checkpoint
when one exists (the full pipeline also skips a stage whose inputs, config and code are unchanged).

The data is the `pairs` table (status ok; degraded and negative-quality rows) with captions from
`captions` where a pair has none. The driver plans each worker's share of the rows from the thin
status and image_id columns; each worker then reads only the row groups of its share
(stages/train_shards.py), so the table is read about once over all workers, not once per
worker. One TorchTrainer per stage: DDP over gloo on CPU, nccl
on GPU, FSDP as an option; the loop is stages/train.py. Checkpoints go to
<lake>/train/<name>-<stage>/ through ray.train.Checkpoint; rerunning the same name (after a kill,
or with more steps) resumes from the latest one. Worker failures restart the worker group up to
``max_failures`` times, each from the latest checkpoint.

MLflow: a nested run per stage with loss, lr, grad norm and samples/s per step, sample grids
(stage 2), the final model (+ its configs) as artifacts under ``model/``, registered as a new
version of ``train.registered_model`` with aliases ``train.alias`` and the stage name, so that
``python pipelines/restore.py restore.model=models:/supir@latest ...`` loads it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


GROUP = ("train_encoder", "train_adaptor")  # the stages this command runs, of the stage table (pipelines/dag.py)


def parse_args(argv: Optional[Sequence[str]] = None):
    from pipelines import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a.split("=", 1)[0] == "--stage" for a in argv):  # the flag before the run config's stages list
        print("config error: --stage is no longer a flag: give the stages as an override, e.g. "
              "\"stages=[train_encoder]\" (both training stages run by default)", file=sys.stderr)
        raise SystemExit(2)
    return cli.parser(__doc__.split("\n\n")[0], default_config=None, stages=GROUP).parse_args(argv)


if __name__ == "__main__":
    parse_args()  # --help and bad flags answer before the imports below (torch, Ray)

import yaml

from catalog import layout
from catalog.config import ConfigError, to_dict
from catalog.lake import Lake
from catalog.registry import is_model_uri, publish as publish_model, resolve_model_path
from catalog.tracking import RunRef, Tracker
from model.config import ModelConfig
from stages.train import TrainConfig, TrainSection, train_loop
from stages.train_shards import Piece, ReadStats, eligible_groups, plan_shares, read_share

log = logging.getLogger("supir")

PAIR_COLUMNS = ["pair_id", "image_id", "kind", "status", "hq", "lq", "caption"]


# ---------------------------------------------------------------------------------------------
# the worker side

class RaySession:
    """stages.train.Session on Ray Train: rank, this worker's share of the rows, checkpoints, report."""

    def __init__(self, data: "TrainShares", run: Optional[RunRef] = None):
        import ray.train

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.data = data
        self.run = run

    def rows(self) -> list[dict[str, Any]]:
        """This worker's rows (stages/train_shards.py: only its own row groups are read); what it
        read goes to the stage's run as data/rank<N>/{rows,row_groups,files,bytes}."""
        rows, stats = self.data.rows(self.rank, self.world_size)
        log.info("train rank %d: read %s", self.rank, stats.metrics())
        if self.run is not None:
            self.run.log_metrics({f"data/rank{self.rank}/{k}": v for k, v in stats.metrics().items()})
        return rows

    def checkpoint(self):
        import contextlib

        import ray.train

        ckpt = ray.train.get_checkpoint()

        @contextlib.contextmanager
        def local():
            if ckpt is None:
                yield None
            else:
                with ckpt.as_directory() as d:
                    yield d

        return local()

    def report(self, metrics: dict[str, Any], checkpoint_dir: Optional[str]) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        name = f"checkpoint_{int(metrics['step']):08d}" if checkpoint is not None else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)


def train_worker(config: dict[str, Any]) -> None:
    """TorchTrainer's train_loop_per_worker: the stage loop on a RaySession."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    init_from = local_folder(config["init_from"]) if config.get("init_from") else None
    run = config.get("run")
    session = RaySession(config["data"], run)
    # every rank samples its own machine (system/rank<N>/... in the stage's run)
    with run.system_metrics(node_id=f"rank{session.rank}") if run is not None else contextlib.nullcontext():
        res = config["train"].resources
        train_loop(config["train"], config["model"], session, run=run, init_from=init_from,
                   degrade=config.get("degrade"), use_gpu=res.gpus_per_worker > 0,
                   num_threads=max(1, int(res.cpus_per_worker)))


def local_folder(uri: str) -> str:
    """A local copy of a folder on any pyarrow filesystem (the lake may be s3://...)."""
    if "://" not in uri or uri.startswith("file://"):
        return uri.removeprefix("file://")
    import pyarrow.fs as pafs

    dest = tempfile.mkdtemp(prefix="supir-init-")
    pafs.copy_files(uri, dest)
    return dest


# ---------------------------------------------------------------------------------------------
# the driver side

@dataclass
class TrainShares:
    """What the training workers read: the lake's filesystem, each rank's pieces of `pairs` and the
    captions map (a pair without a caption gets its image's, else the empty prompt)."""

    fs: Any
    shares: list[list[Piece]]
    captions: dict[str, str]

    def rows(self, rank: int, world_size: int) -> tuple[list[dict[str, Any]], ReadStats]:
        """Rank ``rank``'s rows in pair_id order (what TrainExamples indexes), and what was read."""
        if world_size != len(self.shares):
            raise ValueError(f"the share plan is for {len(self.shares)} workers, this worker group has {world_size}")
        table, stats = read_share(self.fs, self.shares[rank], PAIR_COLUMNS)
        table = _OkWithCaptions(self.captions)(table)
        return sorted(table.to_pylist(), key=lambda r: str(r["pair_id"])), stats


def train_shares(lake: Lake, world_size: int, image_ids: Optional[Sequence[str]] = None) -> TrainShares:
    """Each worker's share of the ok `pairs` rows (``image_ids``: only pairs of these images, the
    train split: held-out photos are never trained on), planned from the status and image_id columns."""
    from catalog.captions import caption_map

    files = lake.files(layout.PAIRS)
    if not files:
        raise ConfigError("train: the `pairs` table is empty; run the degrade stage first")
    keep = _OkWithCaptions({}, image_ids).keep
    groups = eligible_groups(lake.fs, files, ["status", "image_id"], keep)
    try:
        shares = plan_shares(groups, world_size)
    except ValueError as e:
        raise ConfigError(f"train: {e} (run the degrade stage, or check split.heldout_fraction)") from None
    return TrainShares(lake.fs, shares, caption_map(lake))


class _OkWithCaptions:
    def __init__(self, captions: dict[str, str], image_ids: Optional[Sequence[str]] = None):
        self.captions = captions
        self.image_ids = None if image_ids is None else sorted(image_ids)

    def keep(self, block):
        """The rows training may read: status ok, of an image in ``image_ids`` (when given)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        keep = pc.equal(block.column("status"), "ok")
        if self.image_ids is not None:
            keep = pc.and_(keep, pc.is_in(block.column("image_id"), value_set=pa.array(self.image_ids, pa.string())))
        return keep

    def __call__(self, block):
        from catalog.captions import fill_missing

        return fill_missing(block.filter(self.keep(block)).drop_columns(["status"]), "caption", "image_id",
                            self.captions, "")


def train_images(ctx) -> Optional[list[str]]:
    """The image_ids training may read: the train split of the kept images (None: a lake without
    `filtered`, such as pairs written by hand, trains on every pair)."""
    if not ctx.lake.exists(layout.FILTERED):
        log.warning("train: no `filtered` table in the lake, so no held-out split: training on every pair")
        return None
    from pipelines.common import train_image_ids

    return train_image_ids(ctx)


def storage(lake: Lake) -> str:
    return lake.uri(layout.TRAIN)


def final_folder(lake: Lake, section: TrainSection, stage: str) -> str:
    """Where the finished model of a stage is kept: <lake>/train/<name>-<stage>/final."""
    return f"{storage(lake).rstrip('/')}/{section.name}-{stage}/final"


def resolve_init_from(lake: Lake, section: TrainSection, cfg: TrainConfig, tracking_uri: Optional[str] = None
                      ) -> Optional[str]:
    """The checkpoint folder a stage starts from (TrainConfig.init_from), or None for fresh parts."""
    if cfg.init_from == "auto":
        if cfg.stage != "adaptor":
            return None
        path = final_folder(lake, section, "encoder")
        if _exists(lake, f"{path}/supir.json"):
            return path
        log.warning("train adaptor: no finished encoder stage under %s, starting from an untrained E_dr", path)
        return None
    if is_model_uri(cfg.init_from):
        return str(resolve_model_path(cfg.init_from, tracking_uri or None))
    return cfg.init_from or None


def _exists(lake: Lake, path: str) -> bool:
    import pyarrow.fs as pafs

    fs_path = path if lake.local else path.split("://", 1)[1]
    return lake.fs.get_file_info(fs_path).type == pafs.FileType.File


def make_trainer(cfg: TrainConfig, model_cfg: ModelConfig, run_name: str, storage_path: str, data: TrainShares,
                 run: Optional[RunRef], init_from: Optional[str], degrade: Any = None):
    """The TorchTrainer of one stage (resources live here, STYLE item 7)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    res = cfg.resources
    use_gpu = res.gpus_per_worker > 0  # TrainConfig allows 0 or 1
    return TorchTrainer(
        train_worker,
        train_loop_config={"train": cfg, "model": model_cfg, "run": run, "init_from": init_from, "degrade": degrade,
                           "data": data},
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": res.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=run_name, storage_path=storage_path,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             # Ray Train's INFO lines (worker group started, each checkpoint reported) stay
                             # in its log files under the Ray session; the console gets warnings and errors
                             logging_config=LoggingConfig(log_level="WARNING")),
    )


def run_train(ctx, stage: str) -> dict[str, Any]:
    """Train one stage (``"encoder"`` or ``"adaptor"``) of ``ctx.cfg.train`` on ``ctx.cfg.model``.

    Resumes the run <lake>/train/<train.name>-<stage> when it has checkpoints. Returns a summary:
    start_step, step, loss, checkpoint, final (folder), run_id, model_version."""
    section: TrainSection = ctx.cfg.train
    cfg = section.stage(stage)
    model_cfg: ModelConfig = ctx.cfg.model
    lake: Lake = ctx.lake
    degrade = getattr(ctx.cfg, "degrade", None)
    init_from = resolve_init_from(lake, section, cfg, ctx.tracker.uri)
    params = {"train": to_dict(cfg), "model": to_dict(model_cfg), "name": section.name, "init_from": init_from}
    with ctx.tracker.stage(f"train_{stage}", params=params) as run:
        run.log_text(yaml.safe_dump({"train": to_dict(cfg), "model": to_dict(model_cfg)}, sort_keys=False),
                     "train_config.yaml")
        t0 = time.time()
        images = train_images(ctx)
        if images is not None:  # None: no `filtered` table, every pair trains
            run.log_metrics({"train_images": len(images)})
        trainer = make_trainer(cfg, model_cfg, f"{section.name}-{stage}", storage(lake),
                               train_shares(lake, cfg.resources.workers, images),
                               run, init_from, degrade if cfg.on_the_fly_degradation else None)
        result = trainer.fit()
        seconds = time.time() - t0
        if result.error is not None:
            raise result.error
        m = result.metrics or {}
        summary = {"stage": stage, "start_step": int(m.get("start_step", 0)), "step": int(m.get("step", 0)),
                   "loss": m.get("loss"), "seconds": seconds, "run_id": run.run_id if run.enabled else None,
                   "checkpoint": result.checkpoint.path if result.checkpoint else None}
        run.log_metrics({"final_loss": m.get("loss") or float("nan"), "start_step": summary["start_step"],
                         "train_seconds": seconds})
        if result.checkpoint is not None:
            summary.update(publish(result.checkpoint, lake, section, stage, cfg, model_cfg, run,
                                   getattr(ctx.cfg, "restore", None)))
    return summary


def publish(checkpoint, lake: Lake, section: TrainSection, stage: str, cfg: TrainConfig, model_cfg: ModelConfig,
            run: RunRef, restore: Any = None) -> dict[str, Any]:
    """The final model: EMA weights when trained with EMA, kept in <lake>/train/<name>-<stage>/final,
    logged to MLflow as ``model/`` (a pyfunc model whose artifact is the checkpoint folder with its
    configs; ``restore``, the run's RestoreConfig, gives its default restore options), registered
    with the aliases."""
    import pyarrow.fs as pafs

    with tempfile.TemporaryDirectory(prefix="supir-final-") as d:
        checkpoint.to_directory(d)
        model_dir = Path(d) / "model"
        if (Path(d) / "ema.safetensors").is_file():
            apply_ema(model_dir, Path(d) / "ema.safetensors")
        shutil.copy(Path(d) / "state.json", model_dir / "train_state.json")
        (model_dir / "train_config.yaml").write_text(yaml.safe_dump(
            {"train": to_dict(cfg), "model": to_dict(model_cfg)}, sort_keys=False))
        final = final_folder(lake, section, stage)
        dest = final if lake.local else final.split("://", 1)[1]
        lake.fs.delete_dir_contents(dest, missing_dir_ok=True)
        pafs.copy_files(str(model_dir), dest, destination_filesystem=lake.fs)
        out: dict[str, Any] = {"final": final, "model_version": None}
        if run.enabled:
            from stages.restore import RestoreConfig
            from stages.restore_pyfunc import save_pyfunc

            options = to_dict(restore if restore is not None else RestoreConfig())
            pyfunc_dir = save_pyfunc(model_dir, Path(d) / "pyfunc", options)
            if section.registered_model:
                aliases = [a for a in (section.alias, stage) if a]
                out["model_version"], out["model_uri"] = publish_model(run, pyfunc_dir, section.registered_model,
                                                                       aliases)
            else:
                run.client().log_artifacts(run.run_id, str(pyfunc_dir), "model")
    return out


def apply_ema(model_dir: Path, ema_file: Path) -> None:
    """Overwrite the trained parts' weights in a saved model folder with their EMA."""
    from safetensors.torch import load_file, save_file

    ema = load_file(str(ema_file))
    for part in {k.split(".", 1)[0] for k in ema}:
        path = model_dir / part / "diffusion_pytorch_model.safetensors"
        weights = load_file(str(path))
        weights.update({k.split(".", 1)[1]: v.to(weights[k.split(".", 1)[1]].dtype) for k, v in ema.items()
                        if k.startswith(part + ".")})
        save_file(weights, str(path), metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------------
# command line

def main(argv: Optional[Sequence[str]] = None) -> int:
    from pipelines import cli, logs

    logs.setup()
    args = parse_args(argv)
    try:
        from pipelines.config import check_gpus, load_config

        cfg = load_config(args.config, args.overrides)
        cfg.stages = [s for s in cfg.stages if s in GROUP]
        if not cfg.stages:
            raise ConfigError(f"stages lists no training stage: nothing to train (expected some of {', '.join(GROUP)})")
        if args.print_config or args.plan:
            from pipelines.plan import plan_text

            print(cli.config_text(cfg) if args.print_config else plan_text(cfg), end="")
            return 0
        check_gpus(cfg, ray_joined=False)  # before the lake or the MLflow store is created
        lake = Lake(cfg.lake)
        tracker = Tracker(cfg.tracking, cfg.lake)
    except (ConfigError, ValueError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from catalog.lake import LakeError
    from catalog.lake_lock import lake_lock
    from pipelines.common import Context, init_ray

    try:
        with lake_lock(lake):  # one writer per lake
            init_ray(cfg.ray)
            try:
                check_gpus(cfg, ray_joined=True)
            except ConfigError as e:
                print(f"config error: {e}", file=sys.stderr)
                return 2
            ctx = Context(cfg, lake, tracker)
            with tracker.pipeline("train", to_dict(cfg), yaml.safe_dump(to_dict(cfg), sort_keys=False)):
                for stage in cfg.stages:
                    summary = run_train(ctx, stage.removeprefix("train_"))
                    print("TRAIN_RESULT " + json.dumps(summary, default=str), flush=True)
    except LakeError as e:
        print(f"lake error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
