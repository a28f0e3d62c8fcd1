"""How the console trains an audit or follows one: the feeds' side of ``FaevalApp``.

A new audit's device and data are checked on a thread before its directory exists (a
refusal leaves nothing behind, as ``faeval-tui run``), and an npz file's SHA-256 goes into
its config.yaml; a resumed audit's runner loads its own, refusing an npz file that changed
since. A console that trains in this process loads the data for its runner; one whose
trainer is a process of its own checks it in another short-lived process
(``faeval_tui.data_check``), so it never imports torch. Engine events arrive as messages
from the training thread; ``watch`` polls the files.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from textual import work
from textual.message import Message
from textual.worker import Worker, WorkerState

from engine.audit import Audit
from engine.control import requested_runs
from engine.errors import FaevalError, StoreError
from engine.events import Event
from engine.hooks import AlertHook
from engine.plan import plan_runs
from engine.verdicts import Alert

from . import data_check
from .dialogs import ErrorScreen
from .feeds import FileFeed, LiveFeed
from .state import AuditState
from .trainer_process import TRAINER_LOG, log_tail
from .trainer_process import spawn as spawn_trainer

if TYPE_CHECKING:
    from engine.data import TaskData


@dataclass
class EngineEvent(Message):
    """An engine event, posted from a training thread."""

    event: Event


@dataclass
class TaskLoaded(Message):
    """A new audit's device and data, checked on a thread: the audit can be created."""

    task: TaskData | None  # for a runner in this process (None: checked elsewhere, or on_task_loaded took it)
    warning: str | None = None  # what the console says before training (bf16 on a CPU that emulates it)


@dataclass
class TrainingFailed(Message):
    """Training could not start or go on (a missing dataset, a locked audit)."""

    error: FaevalError


class LiveMixin:
    """Training and following, mixed into ``FaevalApp`` (which owns the state and the widgets)."""

    def _begin_live(self, resume: Audit | None) -> None:
        if resume is not None:
            self._start(resume, None, fresh=False)  # its runner loads the data on the training thread
            return
        # device and data before the audit directory, as `faeval-tui run`: a refusal leaves nothing behind
        for spec in plan_runs(self.cfg):
            self.state.add_spec(spec, queued=True)  # the run list shows what will train meanwhile
        self._set_mode(f"loading the {self.cfg.dataset} data")
        self._load()

    @work(thread=True, exclusive=True, group="loading", name="loading", exit_on_error=False)
    def _load(self) -> None:
        """Check the device and the data off the event loop (CIFAR takes seconds); an npz
        file's absolute path and SHA-256 go into ``self.cfg``, so config.yaml pins it."""
        task = None
        try:
            if self.detach:  # the trainer process loads its own copy: a process of its own checks it
                if self._quitting:
                    return
                self.checker = data_check.start()
                warning = data_check.answer(self.checker, self.cfg)
            else:
                from engine.data import checked_task
                from engine.device import precision_warning, training_device

                task = checked_task(self.cfg)  # on the CPU: the runner places it
                warning = precision_warning(self.cfg, training_device(self.cfg))
        except FaevalError as err:
            if not self._quitting:
                self.post_message(TrainingFailed(err))
            return
        except OSError as err:
            self.post_message(TrainingFailed(StoreError(f"cannot start the data check process: {err}",
                                                        "check that faeval-tui is installed in this Python")))
            return
        self.post_message(TaskLoaded(task, warning))

    def on_task_loaded(self, message: TaskLoaded) -> None:
        task, message.task = message.task, None
        if self._quitting:
            return  # quit while the data loaded
        if message.warning:
            self.notify(message.warning, title="precision", severity="warning", timeout=20)
        try:
            audit = Audit.create(self.cfg, self.runs_dir)
        except FaevalError as err:
            self._not_training()
            self.push_screen(ErrorScreen("Cannot create the audit", err))
            return
        self._start(audit, task, fresh=True)

    def _start(self, audit: Audit, task: TaskData | None, fresh: bool) -> None:
        """Train ``audit`` (new, on ``task`` when it trains here; or resumed, loading its own
        data): in a process of its own that the console follows (``detach``), or in this one."""
        if self.detach or audit.is_live():  # attaching to a trainer elsewhere is following it
            self._follow(audit, fresh=fresh)
            return
        self.audit = audit
        self.cfg = audit.cfg
        self.state = AuditState(audit.path, audit.cfg)
        self._seen = (-1, -1, None)  # a new state object: its version numbers say nothing about the old one's
        FileFeed(audit, self.state).poll()  # a resumed audit's history (empty for a new one)
        try:
            self.live_feed = LiveFeed(audit, lambda event: self.post_message(EngineEvent(event)), task=task)
        except FaevalError as err:  # the runner refuses the device (e.g. bf16 on a GPU without it)
            self.on_training_failed(TrainingFailed(err))
            return
        if self.on_alert:  # a failing command is said once in a toast (stderr is under the console)
            warn = partial(self.call_from_thread, self._hook_failed)
            self.alert_hook = AlertHook(self.on_alert, audit.path, warn=warn)
        for spec in self.live_feed.submit_unfinished():
            self.state.add_spec(spec, queued=True)
        self.state.set_live(True)
        self.mode = "live" if fresh else "resumed"
        self.training = self._train()
        self.flush()

    # ---- a trainer in a process of its own (faeval_tui.trainer_process) -----------------
    def _follow(self, audit: Audit, fresh: bool) -> None:
        """Follow ``audit`` through its files, starting its trainer unless one runs already
        (attach); its controls go through the audit directory (``engine.control``)."""
        self.audit = audit
        self.cfg = audit.cfg
        self.state = AuditState(audit.path, audit.cfg)
        self._seen = (-1, -1, None)
        self.file_feed = FileFeed(audit, self.state, live=self.trainer_live)
        attached = audit.is_live()
        if not attached:
            self._spawn_trainer()
        self.file_feed.poll()  # the history: into the alert log, no toasts
        for spec in requested_runs(audit.path):
            self.state.add_spec(spec, queued=True)
        self.mode = "live" if fresh else ("attached" if attached else "resumed")
        self.set_interval(self.poll_s, self._poll_files)
        self.flush()

    def _spawn_trainer(self) -> None:
        try:
            self.trainer = spawn_trainer(self.audit.path, self.on_alert)
        except OSError as err:
            self.on_training_failed(TrainingFailed(StoreError(f"cannot start the trainer process: {err}",
                                                              "check that faeval-tui is installed in this Python")))

    def trainer_live(self) -> bool:
        """The audit trains: this console's trainer process is alive (it may not hold the lock
        yet), or some process holds the audit's lock (an attached console, watch)."""
        own = self.trainer is not None and self.trainer.poll() is None
        return own or (self.audit is not None and self.audit.is_live())

    def _check_trainer(self) -> None:
        """Say so when this console's trainer ended with an error (a refusal before training:
        memory, a changed config), showing its log; start one again for reruns left waiting."""
        if self.trainer is None or self.trainer.poll() is None:
            return
        code, self.trainer = self.trainer.returncode, None
        if code not in (0, 1, 3):  # 1: a run stopped or failed (its end line says which); 3: --strict
            tail = log_tail(self.audit.path)
            self._not_training()
            self.push_screen(ErrorScreen("The trainer process ended with an error",
                                         f"exit code {code}; the end of {self.audit.path / TRAINER_LOG}:\n{tail}"))
            return
        if requested_runs(self.audit.path) and not self.audit.is_live():
            self._spawn_trainer()  # reruns asked for as the last run ended: nobody took them

    def _set_mode(self, mode: str) -> None:
        self.mode = mode
        self.sub_title = self._subtitle()  # now: flush redraws it only when the state changes

    @work(thread=True, exclusive=True, group="training", name="training", exit_on_error=False)
    def _train(self) -> None:
        try:
            self.live_feed.train()
        except FaevalError as err:
            self.post_message(TrainingFailed(err))

    def _poll_files(self) -> None:
        if self.watching is not None:
            self._announce(self.file_feed.poll(), live=False)  # watch: the trainer's own --on-alert runs hooks
            return
        self._check_trainer()
        self._announce(self.file_feed.poll(), live=False)  # the trainer process runs --on-alert itself

    def on_engine_event(self, message: EngineEvent) -> None:
        self._announce(self.state.apply(message.event))

    def on_training_failed(self, message: TrainingFailed) -> None:
        self.failure = message.error  # the command exits non-zero with it once the console closes
        self._not_training()
        self.push_screen(ErrorScreen("Training cannot start", message.error))

    def _not_training(self) -> None:
        for view in self.state.runs.values():
            view.queued = False  # nothing will train them: "not started", not "queued"
        self.state.version += 1
        self.state.set_live(False)
        self._set_mode("not training")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name == "loading" and event.state == WorkerState.ERROR:
            self._not_training()
            self.push_screen(ErrorScreen("Loading the data failed with an internal error", repr(event.worker.error)))
            return
        if event.worker.name != "training" or not event.worker.is_finished:
            return
        self.state.set_live(False)
        if event.state == WorkerState.ERROR:
            self.push_screen(ErrorScreen("Training stopped with an internal error", repr(event.worker.error)))

    def _hook_failed(self, message: str) -> None:
        self.notify(message.removeprefix("warning: "), title="--on-alert", severity="warning", timeout=10)

    def _announce(self, alerts: list[Alert], live: bool = True) -> None:
        for alert in alerts:
            if live and self.alert_hook is not None:
                self.alert_hook(alert)
            # the toast says what fired; the alert log keeps the whole text with its meaning
            self.notify(alert.headline + " (details in the alert log)", title=f"WALK BACK · {alert.run_id}",
                        severity="error", timeout=8)
        if alerts and self.bell_on:
            self.bell()
