"""A training run's model folder, ``<models-root>/<PROJ>_model/``, and what a run may do with it.

Before a run trains, its folder says which kind of run this is:

* **fresh**: absent or empty; training starts at epoch 1;
* **interrupted**: ``backup/`` holds the state after the last completed epoch.
  Only ``--resume`` continues it, and only with the settings (and the images) that
  its ``training_config.json`` records; ``--allow-changes`` accepts other ones and
  records them under ``changes_on_resume``;
* **finished**: ``final_weights.keras`` exists. It is never trained further.

Anything else in the folder belongs to someone else and is never overwritten.

``RunFolder.open`` holds the folder for the whole run (a lock file: two runs started
into one folder would mix their checkpoints), decides which kind of run it is, and
compares the settings; on leaving, it removes a folder the run created and left
empty. The training script then writes through the ``RunFolder``: ``save_config``,
``writing`` (a full disk becomes an error that says how to continue), ``finish``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from .conventions import (
    CHECKPOINT_PATTERN,
    CONFIG_FILE,
    FINAL_WEIGHTS,
    DatasetError,
    best_checkpoint,
    model_dir,
)
from .files import LOCK_FILE, atomic_write_text, hold_folder

BACKUP_FOLDER = "backup"  # Keras' BackupAndRestore state: what --resume continues from
FRESH, RESUME, FINISHED = "fresh", "resume", "finished"

# A training_config.json without these settings was trained with these values
# (the reference's batch-normalization momentum, one-hot targets), so resuming it
# with them is no change.
ASSUMED_WHEN_MISSING = {
    "bn_momentum": 0.99,
    "targets": "onehot",
    # runs from before other backbones and their options: the reference ResNet, plain
    "backbone": "resnet",
    "pretrained": None,
    "early_stopping": None,
}
# A training_config.json without these is silent about them: unknown, not changed.
UNKNOWN_WHEN_MISSING = ("data_root_resolved", "data_fingerprint")


class RunFolder:
    """One projection's model folder during a training run. Use ``RunFolder.open``.

    Attributes:
        folder: ``<models-root>/<PROJ>_model/``.
        state: ``FRESH``, ``RESUME`` or ``FINISHED``.
        settings: what defines the run, as ``training_config.json`` records it.
        changes: on ``--resume --allow-changes``, every setting changed so far,
            ``{"setting", "before", "after"}``.
    """

    def __init__(
        self,
        models_root: str | Path,
        projection: str,
        settings: dict,
        *,
        resume: bool = False,
        allow_changes: bool = False,
    ):
        self.models_root = Path(models_root)
        self.projection = projection
        self.folder = model_dir(models_root, projection)
        self.settings = dict(settings)
        self.resume = resume
        self.allow_changes = allow_changes
        self.state = FRESH
        self.saved: dict | None = None  # the interrupted run's training_config.json
        self.changes: list[dict] = []

    @classmethod
    @contextlib.contextmanager
    def open(
        cls,
        models_root: str | Path,
        projection: str,
        settings: dict,
        *,
        resume: bool = False,
        allow_changes: bool = False,
    ) -> Iterator[RunFolder]:
        """Hold the folder, decide fresh / resume / finished, compare the settings.

        Raises:
            FolderBusyError: another live run holds the folder.
            DatasetError: the folder cannot be trained into as asked (it holds a
                model, an interrupted run without ``--resume``, other settings
                than the interrupted run's, someone else's files); the message
                says what to do.
        """
        run = cls(models_root, projection, settings, resume=resume, allow_changes=allow_changes)
        created = not run.folder.exists()
        try:
            with hold_folder(run.folder, "model folder"):
                run._decide()
                yield run
        finally:
            # A run refused or stopped before writing anything leaves no empty folder.
            if created and run.folder.is_dir() and not any(run.folder.iterdir()):
                with contextlib.suppress(OSError):  # another run may just have taken it
                    run.folder.rmdir()

    # -- the files of a run --------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.state == FINISHED

    @property
    def final_weights(self) -> Path:
        return self.folder / FINAL_WEIGHTS

    @property
    def backup(self) -> Path:
        return self.folder / BACKUP_FOLDER

    @property
    def checkpoints(self) -> str:
        """Keras' file pattern of the best checkpoints: ``weights-improvement-EE-A.AA.keras``."""
        return str(self.folder / CHECKPOINT_PATTERN)

    def new_log_dir(self) -> str:
        """A TensorBoard folder for this session, ``logs/<date>-<time>``."""
        return str(self.folder / "logs" / time.strftime("%Y%m%d-%H%M%S"))

    # -- deciding what the run is --------------------------------------------

    def _decide(self) -> None:
        self.state = self._state()
        if self.state == FINISHED:
            self._check_finished()
        elif self.state == RESUME:
            self.saved = read_saved_config(self.folder)
            if self.saved is None and not self.allow_changes:
                raise DatasetError(
                    f"{self.folder} holds an interrupted run but no {CONFIG_FILE}: the settings "
                    "it was trained with are unknown, so --resume cannot check them. Pass "
                    "--resume --allow-changes to continue it with the settings given now "
                    "(recorded as changes from unknown), or move the folder away and train again"
                )
            # Compared now, before any image is decoded; the images once they are listed.
            self._refuse_changes()

    def _state(self) -> str:
        """FRESH, RESUME or FINISHED; never silently reuse a folder with results."""
        folder = self.folder
        if self.backup.is_dir():
            if self.resume:
                return RESUME
            raise DatasetError(
                f"{folder} holds an interrupted run; pass --resume to continue it, or move the "
                "folder away"
            )
        if self.final_weights.exists():
            if self.resume:
                return FINISHED
            raise DatasetError(
                f"{folder} already holds a trained model; choose another --models-root or move "
                "it away"
            )
        leftovers = (
            [p.name for p in folder.glob("*") if p.name not in ("logs", LOCK_FILE)]
            if folder.is_dir()
            else []
        )
        first_epoch_only = leftovers and not list(folder.glob("weights-improvement-*"))
        if self.resume and first_epoch_only:
            # Killed during its first epoch: nothing was saved that could be resumed.
            print(f"{folder}: no completed epoch to resume from; starting from epoch 1.")
            return FRESH
        if first_epoch_only and (folder / CONFIG_FILE).exists():
            raise DatasetError(
                f"{folder} holds a run that stopped before its first epoch ended "
                f"({', '.join(sorted(leftovers)[:5])}); pass --resume to start it again there, "
                "or choose another --models-root"
            )
        if leftovers:
            raise DatasetError(
                f"{folder} is not empty ({', '.join(sorted(leftovers)[:5])}); "
                "choose another --models-root or move it away"
            )
        return FRESH

    def _check_finished(self) -> None:
        """--resume of a finished run: nothing to train; refused if the settings changed.

        A finished run is never trained further, so changed settings (more epochs,
        say) would silently be ignored: they are refused unless --allow-changes,
        which here only means "leave the finished model as it is and go on".
        """
        saved = read_saved_config(self.folder)
        differences = {} if saved is None else setting_differences(saved, self.settings)
        if differences and not self.allow_changes:
            raise DatasetError(
                f"{self.folder} holds a finished run ({FINAL_WEIGHTS} exists), trained with "
                f"other settings than these (saved -> now):\n  "
                f"{describe_differences(differences)}\n"
                "--resume only continues an interrupted run; a finished one is never trained "
                "further. To train with these settings, choose another --models-root (add "
                f"--init-from {self.models_root} to start from this model's weights); to leave "
                "this model as it is and go on with the other projections, pass --resume "
                "--allow-changes, or resume with the saved settings."
            )
        if differences:
            print(
                f"[{self.projection}] {self.final_weights} exists: training finished with other "
                f"settings ({', '.join(differences)}); the model is left as it is, nothing to "
                "resume."
            )
        else:
            print(
                f"[{self.projection}] {self.final_weights} exists: training finished, nothing "
                "to resume."
            )

    def _refuse_changes(self) -> dict[str, tuple]:
        differences = setting_differences(self.saved or {}, self.settings)
        if differences and not self.allow_changes:
            raise DatasetError(
                f"{self.folder} was trained with other settings than these (saved -> now):\n  "
                f"{describe_differences(differences)}\nResume with the saved settings, or pass "
                "--resume --allow-changes to continue with the new ones (both are then recorded "
                f"in {CONFIG_FILE})."
            )
        return differences

    def check_data(self, fingerprint: dict) -> None:
        """Record which images the run trains on (``training.data_fingerprint``).

        On --resume, other images than the interrupted run's are refused (unless
        --allow-changes), and the changes accepted are added to the earlier ones.
        """
        self.settings["data_fingerprint"] = fingerprint
        if self.state != RESUME:
            return
        differences = self._refuse_changes()
        previous = (self.saved or {}).get("changes_on_resume", [])
        self.changes = (previous if isinstance(previous, list) else [previous]) + [
            {"setting": key, "before": old, "after": new} for key, (old, new) in differences.items()
        ]

    # -- writing --------------------------------------------------------------

    def save_config(self, **details) -> Path:
        """``training_config.json``: the settings, then ``details`` (image counts, versions)."""
        changes = {"changes_on_resume": self.changes} if self.changes else {}
        return save_config(self.folder, {**self.settings, **details, **changes})

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Turn an error writing in the folder (full disk, quota, read-only) into advice.

        Every output is written through a temporary file, so nothing cut is left
        behind, and the completed epochs stay in ``backup/`` for --resume.
        """
        try:
            yield
        except OSError as error:
            where = f" ({error.filename})" if error.filename else ""
            raise DatasetError(
                f"[{self.projection}] cannot write in the model folder {self.folder}: "
                f"{error.strerror or error}{where}. No half-written file was left there and the "
                "completed epochs are kept: free some space (or make the folder writable), then "
                "run the same command with --resume to continue."
            ) from error

    def divergence_advice(self, error: Exception) -> str:
        """What to do after the loss became NaN or infinite (``error`` says when)."""
        rate = self.settings["learning_rate"]
        lower = f"--learning-rate {rate / 10:g}"
        if self.backup.is_dir():  # earlier epochs were finite and backed up
            next_step = (
                f"continue from the last finite epoch with --resume --allow-changes {lower}, "
                f"or start again in another --models-root"
            )
        else:
            next_step = f"no epoch was completed: run again with --resume {lower}"
        return (
            f"[{self.projection}] training diverged: {error} with learning rate {rate:g}; try a "
            f"lower --learning-rate (e.g. {rate / 10:g}). Nothing of the diverged model was "
            f"saved in {self.folder}; {next_step}."
        )

    def finish(self) -> None:
        """Delete the resume backup, once the final model and the curves are written.

        Not earlier (Keras would delete it at the end of ``fit``): if writing them
        fails, --resume restores the last epoch and writes them then.
        """
        shutil.rmtree(self.backup, ignore_errors=True)


# ----------------------------------------------------------------------------
# Settings: saved, compared, described
# ----------------------------------------------------------------------------


def save_config(folder: Path, config: dict) -> Path:
    return atomic_write_text(Path(folder) / CONFIG_FILE, json.dumps(config, indent=2) + "\n")


def read_saved_config(folder: Path) -> dict | None:
    """The run's training_config.json as a dict, or None if it has none.

    Raises:
        DatasetError: the file is unreadable, not JSON (a truncated write, an
            edit gone wrong) or not a JSON object; the message says what to do.
    """
    path = folder / CONFIG_FILE
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: JSONDecodeError, UnicodeDecodeError
        reason = str(error) or type(error).__name__
    else:
        if isinstance(saved, dict):
            return saved
        reason = f"it holds a JSON {type(saved).__name__}, not an object"
    raise DatasetError(
        f"{path}: not a readable training configuration ({reason}). It records the settings "
        f"of the run in {folder}, which --resume compares with the ones given now: restore it "
        "from a copy, or delete it and pass --resume --allow-changes to continue with the "
        "settings given now; or move the folder away and train again"
    )


def setting_differences(saved: dict, settings: dict) -> dict[str, tuple]:
    """setting -> (saved value, new value) for every setting that changed.

    Keys of ``saved`` that are not settings (image counts, library versions)
    are ignored; ``data_root`` and ``data_root_resolved`` are compared as
    resolved paths; a setting of ``UNKNOWN_WHEN_MISSING`` that ``saved`` lacks
    is not a difference.
    """
    differences = {}
    for key, value in settings.items():
        if key in UNKNOWN_WHEN_MISSING and key not in saved:
            continue
        before = saved.get(key, ASSUMED_WHEN_MISSING.get(key))
        same = (
            before is not None and _resolved_roots(before) == _resolved_roots(value)
            if key in ("data_root", "data_root_resolved")
            else before == value
        )
        if not same:
            differences[key] = (before, value)
    return differences


def _resolved_roots(value) -> list[Path] | None:
    try:
        return [Path(root).resolve() for root in ([value] if isinstance(value, str) else value)]
    except TypeError:  # a hand-edited configuration: not paths, so never equal to the new ones
        return None


def describe_differences(differences: dict[str, tuple]) -> str:
    """One line per setting, ``setting: saved -> now``; data fingerprints in short."""
    lines = []
    for key, (old, new) in differences.items():
        if key == "data_fingerprint":
            lines.append(f"{key}: {_describe_fingerprint(old)} -> {_describe_fingerprint(new)}")
        else:
            lines.append(f"{key}: {old!r} -> {new!r}")
    text = "\n  ".join(lines)
    if differences.keys() & {"data_root", "data_root_resolved", "data_fingerprint"}:
        text += (
            "\n(the images may not be the run's: check --data-root; a relative --data-root "
            f"is resolved from the working directory, now {Path.cwd()})"
        )
    return text


def _describe_fingerprint(fingerprint) -> str:
    if not isinstance(fingerprint, dict):
        return repr(fingerprint)
    return ", ".join(
        f"{split} {part.get('files')} files (names {str(part.get('names_sha256'))[:12]})"
        if isinstance(part, dict)
        else f"{split} {part!r}"
        for split, part in fingerprint.items()
    )


# ----------------------------------------------------------------------------
# Other runs' folders
# ----------------------------------------------------------------------------


def warm_start_source(models_root: Path, projection: str) -> Path:
    """The model file ``--init-from MODELS_ROOT`` starts from: the best checkpoint of
    ``MODELS_ROOT/<PROJ>_model/``, else its final_weights.keras (shipped models have only that).
    """
    folder = model_dir(models_root, projection)
    source = best_checkpoint(folder)
    if source is None and (folder / FINAL_WEIGHTS).is_file():
        source = folder / FINAL_WEIGHTS
    if source is None:
        raise SystemExit(
            f"--init-from: no checkpoint in {folder}; give the models root of a finished "
            "training run"
        )
    return source


def copy_run(source: Path, target: Path) -> None:
    """A finished run's folder copied to another projection's (one view-agnostic network).

    Everything but the TensorBoard logs and the resume backup is copied; the
    configuration names the folder's projection (stages 2-4 check it).
    """
    if target.exists() and any(target.iterdir()):
        raise DatasetError(f"{target} is not empty; choose another --models-root or move it away")
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in source.iterdir():
        # Hidden files are the run's lock and temporary files, not outputs.
        if path.is_file() and path.name != CONFIG_FILE and not path.name.startswith("."):
            shutil.copy2(path, staging / path.name)
    config = json.loads((source / CONFIG_FILE).read_text())
    config["projection"] = target.name.removesuffix("_model")
    save_config(staging, config)
    if target.exists():
        target.rmdir()
    staging.rename(target)
    print(f"[{config['projection']}] the view-agnostic network copied to {target}")
