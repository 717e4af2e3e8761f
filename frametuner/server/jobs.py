"""Jobs: folders on disk, rows in SQLite, CLI subprocesses, and the queue that runs them.

Each job is ``frametuner train``, ``sample`` or ``caption`` run as an argument list (never
a shell string) in its own folder, with its own log and ``output/``. One job runs per
GPU (pinned through ``CUDA_VISIBLE_DEVICES``); the rest wait in FIFO order. Processes
start in their own session, so they outlive a server restart: the next server finds
them again by pid (and start tick), or marks the job interrupted so it can resume.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..config.schema import PATH_MODEL, path_fields
from .configform import CONFIG_FILE, OUTPUT_SUBDIR, CheckResult, confinement_problems, write_job_config
from .gpus import CPU_SLOT, scheduling_slots
from .paths import resolve_inside
from .progress import RunProgress
from .settings import ServerSettings, package_root
from .store import (
    CANCELLED,
    CAPTION,
    CREATED,
    FAILED,
    FINISHED,
    INTERRUPTED,
    LIVE,
    QUEUED,
    RUNNING,
    SAMPLE,
    STOPPED,
    STOPPING,
    TRAIN,
    Job,
    JobStore,
)

log = logging.getLogger("frametuner.server")

LOG_FILE = "job.log"
LAUNCH_MARKER = b"===== "  # starts the line the server writes into the log at each launch
ERROR_TAIL_BYTES = 64 * 1024
SAMPLE_VIDEO = "sample.mp4"
RESUMABLE = (STOPPED, INTERRUPTED, FAILED, CANCELLED)
# A preview (sample job) takes a training job's model keys, not the files its run reads or writes.
SAMPLE_DROPPED_KEYS = tuple(key for key, spec in path_fields(TrainConfig).items() if spec.kind != PATH_MODEL)


def last_error_line(log_path: Path) -> str | None:
    """Why the latest launch failed, from its log: the CLI's ``error:`` line, else an exception's last line."""
    try:
        with open(log_path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - ERROR_TAIL_BYTES))
            tail = handle.read()
    except OSError:
        return None
    launch = tail.rfind(b"\n" + LAUNCH_MARKER)
    tail = tail[launch + 1 :] if launch >= 0 else tail
    lines = [line.strip() for line in tail.decode("utf-8", errors="replace").replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith("error:")]
    errors = errors or [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line)]
    if not errors:
        return None
    line = errors[-1]
    return (line[len("error:") :].strip() if line.lower().startswith("error:") else line)[:1000]


class JobStateError(RuntimeError):
    """An action that does not fit the job's current state (HTTP 409)."""


def new_job_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


# ---------------------------------------------------------------------- processes
def _process_start_tick(pid: int) -> tuple[str | None, str | None]:
    """(state letter, start tick) from /proc; (None, None) when the pid is gone or /proc is absent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None, None
    fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
    return fields[0], fields[19]


def _pid_alive(pid: int, start_tick: str | None) -> tuple[bool, int | None]:
    """(alive, exit code if we could reap it). Zombies and reused pids count as gone."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False, os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        pass  # not our child (started by an earlier server): look it up instead
    if Path("/proc").is_dir():
        state, tick = _process_start_tick(pid)
        if state is None or state in ("Z", "X"):
            return False, None
        return (start_tick is None or tick == start_tick), None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, None
    except PermissionError:
        pass
    return True, None


def _signal_group(pid: int, signum: int) -> None:
    """Signal the job's whole process group (it leads its own session), so every rank hears it."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, signum)


# ---------------------------------------------------------------------- manager
class JobManager:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(settings.database_path)
        self.slots = scheduling_slots(settings.gpus)
        self._processes: dict[str, subprocess.Popen] = {}
        self._progress: dict[str, RunProgress] = {}
        self._lock = threading.RLock()  # scheduling and state changes
        self._progress_lock = threading.Lock()  # the event-stream caches (read by every page)
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def cpu_only(self) -> bool:
        """No GPU to run jobs on: one CPU slot."""
        return self.slots == [CPU_SLOT]

    # ------------------------------------------------------------------ folders
    def job_dir(self, job_id: str) -> Path:
        return self.settings.jobs_dir / job_id

    def output_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / OUTPUT_SUBDIR

    def log_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / LOG_FILE

    def get(self, job_id: str) -> Job:
        return self.store.get(job_id)

    def list(self) -> list[Job]:
        return self.store.list()

    def progress(self, job_id: str) -> RunProgress:
        with self._progress_lock:
            progress = self._progress.get(job_id)
            if progress is None:
                progress = self._progress[job_id] = RunProgress(self.job_dir(job_id), self.output_dir(job_id))
            return progress.update()

    def read_config(self, job_id: str) -> dict[str, Any]:
        return json.loads((self.job_dir(job_id) / CONFIG_FILE).read_text(encoding="utf-8"))

    # ------------------------------------------------------------------ creation
    def create_train_job(self, name: str, config: dict[str, Any], dataset_text: str | None) -> tuple[Job | None, CheckResult]:
        """Write and check the job's config; the job exists only if the check passes."""
        job_id = new_job_id()
        folder = self.job_dir(job_id)
        result = write_job_config(folder, config, dataset_text, self.settings)
        if not result.ok:
            _remove_tree(folder)
            return None, result
        resolved = result.resolved or {}
        title = name.strip() or f"{resolved.get('model_family')}/{resolved.get('model_flavour')} {resolved.get('model_type')}"
        job = Job(id=job_id, kind=TRAIN, name=title, slots_needed=int(resolved.get("num_processes", 1)))
        return self.store.insert(job), result

    def create_sample_job(
        self,
        name: str,
        params: dict[str, Any],
        config: dict[str, Any],
        image: tuple[bytes, str] | None = None,
        lora: tuple[str, str, float] | None = None,
        video: tuple[bytes, str] | None = None,
    ) -> tuple[Job | None, CheckResult]:
        """A ``frametuner sample`` job. ``config`` gives model options; ``lora`` is (job id, path in it, multiplier)."""
        job_id = new_job_id()
        folder = self.job_dir(job_id)
        # Model keys only: the training run's data, outputs and resume point are not the preview's.
        result = write_job_config(folder, config, None, self.settings, drop=SAMPLE_DROPPED_KEYS)
        if not result.ok:
            _remove_tree(folder)
            return None, result
        params = dict(params)
        if lora is not None:
            source_job, relative, multiplier = lora
            params["lora_path"] = str(resolve_inside(self.job_dir(source_job), relative))
            params["lora_multiplier"] = multiplier
        if image is not None:
            data, suffix = image
            inputs = folder / "inputs"
            inputs.mkdir(parents=True, exist_ok=True)
            image_path = inputs / f"image{suffix}"
            image_path.write_bytes(data)
            params["image_path"] = str(image_path)
        if video is not None:  # an uploaded video to continue (a picked one arrives as params["video_path"])
            data, suffix = video
            inputs = folder / "inputs"
            inputs.mkdir(parents=True, exist_ok=True)
            video_path = inputs / f"video{suffix}"
            video_path.write_bytes(data)
            params["video_path"] = str(video_path)
        title = name.strip() or f"preview: {params['prompt'][:48]}"
        job = Job(id=job_id, kind=SAMPLE, name=title, params=params)
        return self.store.insert(job), result

    # ------------------------------------------------------------------ commands
    def command(self, job: Job) -> list[str]:
        """The job's argument list: the CLI prefix, then flags built from checked settings only."""
        config_path = str(self.job_dir(job.id) / CONFIG_FILE)
        prefix = list(self.settings.cli_command)
        if job.kind == TRAIN:
            resume = ["--resume_from_checkpoint", "latest"] if job.resume else []
            return prefix + ["train", "--config", config_path] + resume
        if job.kind == CAPTION:
            from .captions import caption_command

            return caption_command(prefix, job.params, self.output_dir(job.id))
        p = job.params
        # "--flag=value" keeps a prompt that starts with "-" from reading as a flag.
        args = prefix + ["sample", "--config", config_path, f"--prompt={p['prompt']}"]
        if p.get("negative_prompt"):
            args.append(f"--negative_prompt={p['negative_prompt']}")
        if p.get("image_path"):
            args.append(f"--image={p['image_path']}")
        if p.get("lora_path"):
            args.append(f"--lora={p['lora_path']}:{p.get('lora_multiplier', 1.0)}")
        # Unset size/length/steps/guidance: the sample command takes the model family's defaults.
        args += [f"--{key}={p[key]}" for key in ("resolution", "num_frames", "steps", "guidance") if p.get(key) is not None]
        args.append(f"--seed={p['seed']}")
        if p.get("fps"):
            args.append(f"--fps={p['fps']}")
        # Video continuation / long video (frametuner sample --video, --segments).
        if p.get("video_path"):
            args.append(f"--video={p['video_path']}")
        if p.get("cond_frames"):
            args.append(f"--cond_frames={int(p['cond_frames'])}")
        if p.get("segments"):
            args.append(f"--segments={int(p['segments'])}")
        args += [flag for flag in ("--no_kv_cache", "--no_enhance_hf") if p.get(flag.removeprefix("--"))]
        args.append(f"--output={self.output_dir(job.id) / SAMPLE_VIDEO}")
        return args

    def _environment(self, gpus: list[str], job: Job) -> dict[str, str]:
        env = dict(os.environ)
        # The job imports the same frametuner the server runs from.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package_root()), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env["FRAMETUNER_JOB_ID"] = job.id
        if gpus and gpus != [CPU_SLOT]:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        return env

    def _launch(self, job: Job, gpus: list[str]) -> None:
        folder = self.job_dir(job.id)
        self.output_dir(job.id).mkdir(parents=True, exist_ok=True)
        command = self.command(job)
        env = self._environment(gpus, job)
        with open(self.log_path(job.id), "ab") as log_file:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            devices = f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else "CPU"
            log_file.write(f"===== {stamp} launching ({devices}): {shlex.join(command)}\n".encode())
            log_file.flush()
            try:
                process = subprocess.Popen(
                    command,
                    cwd=folder,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            except OSError as error:
                self.store.update(job.id, status=FAILED, message=f"could not start: {error}", finished_at=time.time())
                return
        self._processes[job.id] = process
        _, tick = _process_start_tick(process.pid)
        self.store.update(
            job.id,
            status=RUNNING,
            pid=process.pid,
            pid_start=tick,
            gpus=gpus,
            started_at=time.time(),
            finished_at=None,
            exit_code=None,
            message="",
            cancel_requested=False,
        )
        log.info("job %s started (pid %d): %s", job.id, process.pid, shlex.join(command))

    def _exit_status(self, job: Job) -> tuple[bool, int | None]:
        """(ended, exit code or None when unknown)."""
        process = self._processes.get(job.id)
        if process is not None:
            code = process.poll()
            return code is not None, code
        if job.pid is None:
            return True, None
        alive, code = _pid_alive(job.pid, job.pid_start)
        return not alive, code

    def _failure(self, job: Job, code: int | None) -> str:
        """A failed job's message: its error line (event or log), with the exit code."""
        progress = self.progress(job.id) if job.kind == TRAIN else None
        line = (progress.error if progress is not None and progress.terminal == "error" else None) or last_error_line(self.log_path(job.id))
        suffix = f"exit code {code}" if code is not None else "no exit code"
        return f"{line} ({suffix})" if line else f"{suffix}; see the log"

    def has_checkpoint(self, job: Job) -> bool:
        """Whether resuming would continue from a checkpoint (the run's events announced one)."""
        return job.kind == TRAIN and bool(self.progress(job.id).checkpoints)

    def _finish(self, job: Job, code: int | None) -> Job:
        """Decide how a job ended, from its exit code and what its event stream says."""
        self._processes.pop(job.id, None)
        message = ""
        if job.cancel_requested:
            status = CANCELLED
        elif job.kind == TRAIN:
            progress = self.progress(job.id)
            if code not in (0, None) or progress.terminal == "error":
                status, message = FAILED, self._failure(job, code)
            elif progress.terminal == "done":
                status = FINISHED
            elif progress.terminal == "stopped":
                status = STOPPED
            elif code == 0:
                status = FINISHED
            else:
                status = INTERRUPTED
                message = "the trainer went away without a final event" + (
                    "; resume from the latest checkpoint" if self.has_checkpoint(job) else " before its first checkpoint"
                )
        elif job.kind == CAPTION and code in (0, 1):  # 1: some files failed, each listed with its reason
            status = FINISHED
            message = "" if code == 0 else "some files could not be captioned; the log and the review list them with the reason"
        else:
            video = self.output_dir(job.id) / SAMPLE_VIDEO
            if code == 0 or (code is None and video.is_file()):
                status = FINISHED
            elif code is None:
                status, message = INTERRUPTED, "the sampler went away while the server was down"
            else:
                status, message = FAILED, self._failure(job, code)
        log.info("job %s %s (exit code %s)", job.id, status, code)
        return self.store.update(
            job.id, status=status, exit_code=code, message=message, finished_at=time.time(), pid=None, resume=False
        )

    # ------------------------------------------------------------------ actions
    def _check_roots(self, job_id: str) -> None:
        """Refuse to run a job whose saved paths left the server's roots (e.g. a dropped --allow-path)."""
        problems = confinement_problems(self.job_dir(job_id), self.settings)
        if problems:
            where = f"'{problems[0].field}': " if problems[0].field else ""
            raise JobStateError(f"job {job_id} cannot run: {where}{problems[0].message}")

    def start(self, job_id: str) -> Job:
        with self._lock:
            job = self.get(job_id)
            if job.status != CREATED:
                raise JobStateError(f"job {job_id} is {job.status}; only a new job can be started (use resume)")
            self._check_roots(job_id)
            job = self.store.update(job_id, status=QUEUED, queued_at=time.time(), message="")
            self.tick()
            return self.get(job_id)

    def resume(self, job_id: str) -> Job:
        with self._lock:
            job = self.get(job_id)
            if job.kind != TRAIN or job.status not in RESUMABLE:
                raise JobStateError(f"job {job_id} is {job.status}; only a stopped, interrupted, failed or cancelled training job resumes")
            if not self.has_checkpoint(job):
                raise JobStateError(f"job {job_id} saved no checkpoint to resume from; start a new job from its config")
            self._check_roots(job_id)
            self.store.update(job_id, status=QUEUED, queued_at=time.time(), resume=True, message="", cancel_requested=False)
            self.tick()
            return self.get(job_id)

    def stop(self, job_id: str) -> Job:
        """Graceful: SIGTERM, the trainer saves a checkpoint and exits. A queued job leaves the queue."""
        with self._lock:
            job = self.get(job_id)
            if job.status == QUEUED:
                return self.store.update(job_id, status=CREATED if not job.resume else STOPPED, queued_at=None, resume=False)
            if job.status not in LIVE:
                raise JobStateError(f"job {job_id} is {job.status}; it is not running")
            ended, code = self._exit_status(job)
            if ended:
                return self._finish(job, code)
            _signal_group(job.pid, signal.SIGTERM)
            return self.store.update(job_id, status=STOPPING)

    def cancel(self, job_id: str) -> Job:
        """Immediate: SIGKILL to the job's process group; no checkpoint."""
        with self._lock:
            job = self.get(job_id)
            if job.status == QUEUED:
                return self.store.update(job_id, status=CANCELLED, finished_at=time.time(), resume=False)
            if job.status not in LIVE:
                raise JobStateError(f"job {job_id} is {job.status}; it is not running")
            job = self.store.update(job_id, cancel_requested=True)
            ended, _ = self._exit_status(job)
            if not ended:
                _signal_group(job.pid, signal.SIGKILL)
            process = self._processes.get(job_id)
        if process is not None:  # wait outside the lock: pages keep answering meanwhile
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.tick()  # settles it as cancelled once the process is gone
        return self.get(job_id)

    def actions(self, job: Job) -> list[str]:
        if job.status == CREATED:
            return ["start"]
        if job.status == QUEUED:
            return ["stop", "cancel"]
        if job.status == RUNNING:
            return ["stop", "cancel"]
        if job.status == STOPPING:
            return ["cancel"]
        if job.kind == TRAIN and job.status in RESUMABLE and self.has_checkpoint(job):
            return ["resume"]
        return []

    # ------------------------------------------------------------------ scheduling
    def tick(self) -> None:
        """Reap finished processes, then start queued jobs on free slots (FIFO)."""
        with self._lock:
            for job in self.store.list(LIVE):
                ended, code = self._exit_status(job)
                if ended:
                    self._finish(job, code)
            busy = {gpu for job in self.store.list(LIVE) for gpu in job.gpus}
            free = [slot for slot in self.slots if slot not in busy]
            for job in sorted(self.store.list((QUEUED,)), key=lambda j: (j.queued_at or 0, j.id)):
                if job.slots_needed > len(self.slots):
                    self.store.update(
                        job.id,
                        status=FAILED,
                        finished_at=time.time(),
                        message=f"needs {job.slots_needed} GPUs (num_processes); this machine has {len(self.slots)} slot(s)",
                    )
                    continue
                if job.slots_needed > len(free):
                    break  # strict FIFO: a big job is not starved by small ones behind it
                take, free = free[: job.slots_needed], free[job.slots_needed :]
                self._launch(job, take)

    def recover(self) -> None:
        """On server start: keep following live job processes; settle the ones that ended meanwhile."""
        with self._lock:
            for job in self.store.list(LIVE):
                ended, code = self._exit_status(job)
                if ended:
                    self._finish(job, code)
                else:
                    log.info("job %s: reattached to running pid %s", job.id, job.pid)

    def run_in_background(self) -> None:
        self.recover()

        def loop() -> None:
            while not self._halt.wait(self.settings.poll_seconds):
                try:
                    self.tick()
                except Exception:  # keep scheduling whatever one tick hit
                    log.exception("scheduler tick failed")

        self._thread = threading.Thread(target=loop, name="frametuner-jobs", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop scheduling; running jobs keep running (a restarted server reattaches)."""
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.store.close()


def _remove_tree(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


IMAGE_TYPES = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}
VIDEO_TYPES = {"video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov"}


def decode_data_url(data_url: str, types: dict[str, str] = IMAGE_TYPES, what: str = "image") -> tuple[bytes, str]:
    """``data:image/png;base64,...`` -> (bytes, file suffix); only the given types (common still images by default)."""
    suffixes = types
    example = next(iter(types))
    header, _, payload = data_url.partition(",")
    if not header.startswith("data:") or ";base64" not in header:
        raise ValueError(f"{what} must be a data URL (data:{example};base64,...)")
    mime = header[5:].split(";")[0]
    if mime not in suffixes:
        names = ", ".join(suffix.removeprefix(".").upper() for suffix in suffixes.values())
        raise ValueError(f"{what} type {mime!r} is not supported; use {names}")
    try:
        data = base64.b64decode(payload, validate=True)
    except ValueError:
        raise ValueError(f"{what} data is not valid base64") from None
    return data, suffixes[mime]
