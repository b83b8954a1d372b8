"""Where trials are logged besides Parquet: TensorBoard and MLflow, through Tune's callbacks.

MLflow is Ray's ``MLflowLoggerCallback``; TensorBoard is a Tune logger callback of ours that
writes with TensorBoard's own event writer (Tune's ``TBXLoggerCallback`` writes through
tensorboardX, which imports torch into the sweep's driver: 2 CPU-seconds a start). Both
are narrowed to what a sweep user compares:

- a metric's step is the trial's epoch, and only the per-epoch metrics of the Parquet file
  ``epochs.parquet`` are logged; a trial's last report (its summary, carrying its history
  and layer rows) is not an epoch and is left out;
- TensorBoard's hyper-parameters are the trial's gamma, kind, seed and width (fixed_bits
  for fixed-bits trials), for its HParams view: Tune would log only the sampled gamma;
- an MLflow run's parameters are the trial's whole Tune config (``gamma``, ``kind``,
  ``train/seed``, ``train/preset``, ... as Ray flattens it); when the trial ends its rows
  of the three Parquet files are attached to the run as artifacts.

Tune writes the TensorBoard files into its staging folder and copies them into the sweep
folder with each snapshot of its state (every few seconds while trials report).
"""

from __future__ import annotations

import math
import tempfile
import time
from numbers import Real
from pathlib import Path

from ray._private.dict import flatten_dict
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.logger import LoggerCallback

from sweep.space import overrides, swept_values
from sweep.store import ParquetCallback, write
from trainer.results import EPOCH_METRICS

ARTIFACTS = "mlartifacts"  # the artifact folder of a sweep's own MLflow store, beside it
HPARAMS = ("gamma", "kind", "seed", "width", "fixed_bits")  # TensorBoard's HParams columns


def epoch_metrics(result: dict) -> dict | None:
    """The epochs.parquet metrics of a per-epoch report; None for a trial's summary."""
    if "layers" in result or "epoch" not in result:
        return None
    return {k: result[k] for k in EPOCH_METRICS if result.get(k) is not None}


def hparams(config: dict) -> dict:
    """A trial's TensorBoard hyper-parameters, from its Tune config (none of them None):
    HPARAMS, then the fields its sweep's space varies (sweep.params)."""
    params = swept_values(config)
    train = {**config.get("train", {}), **params, **overrides(config)}
    values = {"gamma": config.get("gamma"), "kind": config.get("kind"),
              "seed": train.get("seed"), "width": train.get("width"),
              "fixed_bits": train.get("fixed_bits")}
    chosen = {k: v for k in HPARAMS if (v := values[k]) is not None}
    return {**chosen, **{k: v for k, v in params.items() if k not in chosen}}


class TensorBoardCallback(LoggerCallback):
    """Per-epoch scalars ``ray/tune/<metric>`` at step = epoch in each trial's folder, and its
    hyper-parameters (``hparams``) against its last epoch's metrics when it ends."""

    _SAVED_FILE_TEMPLATES = ["events.out.tfevents.*"]  # its files, as for Tune's own logger

    def __init__(self):
        self._writers: dict = {}  # Trial -> EventFileWriter
        self._last: dict = {}  # Trial -> {tag: value} of its last epoch

    def log_trial_start(self, trial):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        if trial in self._writers:
            self._writers[trial].close()
        trial.init_local_path()
        self._writers[trial] = EventFileWriter(trial.local_path, flush_secs=30)
        self._last[trial] = {}

    def log_trial_result(self, iteration: int, trial, result: dict):
        from tensorboard.compat.proto.summary_pb2 import Summary

        metrics = epoch_metrics(result)
        if metrics is None:
            return
        if trial not in self._writers:
            self.log_trial_start(trial)
        scalars = {f"ray/tune/{k}": float(v) for k, v in metrics.items()
                   if isinstance(v, Real) and not math.isnan(v)}
        self._write(trial, Summary(value=[Summary.Value(tag=tag, simple_value=value)
                                          for tag, value in scalars.items()]),
                    step=int(metrics["epoch"]))
        self._writers[trial].flush()
        self._last[trial] = scalars

    def log_trial_end(self, trial, failed: bool = False):
        writer, last = self._writers.get(trial), self._last.pop(trial, {})
        if writer is None:
            return
        if last:  # the last epoch's metrics, as TensorBoard's HParams view shows them
            for summary in hparams_summaries(hparams(trial.config), last):
                self._write(trial, summary, step=0)
        writer.close()
        del self._writers[trial]

    def _write(self, trial, summary, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self._writers[trial].add_event(Event(wall_time=time.time(), step=step,
                                             summary=summary))


def hparams_summaries(params: dict, metrics: dict) -> list:
    """The three summaries of TensorBoard's HParams plugin for one trial (its experiment,
    session start and session end), as tensorboardX's ``summary.hparams`` builds them."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    start = plugin_data_pb2.SessionStartInfo()
    infos = []
    for name, value in params.items():
        if isinstance(value, bool):
            start.hparams[name].bool_value, kind = value, "DATA_TYPE_BOOL"
        elif isinstance(value, Real):
            start.hparams[name].number_value, kind = float(value), "DATA_TYPE_FLOAT64"
        else:
            start.hparams[name].string_value, kind = str(value), "DATA_TYPE_STRING"
        infos.append(api_pb2.HParamInfo(name=name, type=api_pb2.DataType.Value(kind)))
    experiment = api_pb2.Experiment(
        hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metrics])
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value("STATUS_SUCCESS"))

    def summary(tag: str, **data) -> Summary:
        content = plugin_data_pb2.HParamsPluginData(version=0, **data).SerializeToString()
        metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
            plugin_name="hparams", content=content))
        return Summary(value=[Summary.Value(tag=tag, metadata=metadata)])

    return [summary("_hparams_/experiment", experiment=experiment),
            summary("_hparams_/session_start_info", session_start_info=start),
            summary("_hparams_/session_end_info", session_end_info=end)]


class MLflowCallback(MLflowLoggerCallback):
    """Ray's MLflow logger: one run per trial in the experiment named after the sweep.

    ``store`` is the sweep's ParquetCallback, listed before this one, whose records give a
    finished trial's Parquet rows. A resumed sweep logs into the runs it started before.
    """

    def __init__(self, tracking_uri: str, sweep: str, store: ParquetCallback):
        super().__init__(tracking_uri, experiment_name=sweep, tags={"sweep": sweep})
        self.store = store

    def setup(self, *args, **kwargs):
        from mlflow.tracking import MlflowClient

        # A store in the sweep folder keeps its artifacts there too (MLflow's default is
        # ./mlruns in the driver's working directory, which `ray job submit` throws away).
        client = MlflowClient(self.tracking_uri)
        if (self.tracking_uri.startswith("sqlite:///")
                and client.get_experiment_by_name(self.experiment_name) is None):
            db = Path(self.tracking_uri.removeprefix("sqlite:///")).resolve()
            client.create_experiment(self.experiment_name,
                                     artifact_location=(db.parent / ARTIFACTS).as_uri())
        super().setup(*args, **kwargs)

    def log_trial_start(self, trial):
        if trial not in self._trial_runs:  # after --resume: the run of this trial, if any
            client = self.mlflow_util._get_client()
            runs = client.search_runs([self.mlflow_util.experiment_id],
                                      filter_string=f"tags.trial_name = '{trial}'")
            # A trial Tune re-creates under the same id may hold other settings; MLflow
            # refuses to change a run's parameters, so that one gets a run of its own. A
            # run whose parameters a kill cut short (Ray starts the run, then logs them)
            # is this trial's if the ones it has agree: the rest are logged into it.
            params = {k: str(v) for k, v in flatten_dict(trial.config).items()}
            same = [r for r in runs
                    if all(params.get(k) == v for k, v in r.data.params.items())]
            if same:
                self._trial_runs[trial] = same[0].info.run_id
                client.update_run(same[0].info.run_id, status="RUNNING")
        super().log_trial_start(trial)

    def log_trial_result(self, iteration: int, trial, result: dict):
        metrics = epoch_metrics(result)
        if metrics is not None:
            self.mlflow_util.log_metrics(run_id=self._trial_runs[trial],
                                         metrics_to_log=metrics, step=int(metrics["epoch"]))

    def on_experiment_end(self, trials, **info):
        """A run still RUNNING for no trial of this sweep is a trial a kill cut short before
        Tune's last snapshot (the resumed sweep runs its point as another trial): KILLED."""
        client = self.mlflow_util._get_client()
        known = {str(trial) for trial in trials}
        for run in client.search_runs([self.mlflow_util.experiment_id],
                                      filter_string="attributes.status = 'RUNNING'"):
            if run.data.tags.get("trial_name") not in known:
                client.set_terminated(run.info.run_id, status="KILLED")
        super().on_experiment_end(trials, **info)

    def log_trial_end(self, trial, failed: bool = False):
        if trial not in self._trial_runs:  # ended before it started: no run to close
            return
        record = self.store.records.get(trial.trial_id)
        if record is not None:
            with tempfile.TemporaryDirectory() as folder:
                write(folder, self.experiment_name, {trial.trial_id: record})
                self.mlflow_util.save_artifacts(run_id=self._trial_runs[trial], dir=folder)
        super().log_trial_end(trial, failed)
