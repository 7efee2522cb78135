"""Helpers shared by several test modules: the `dalda` command run as users run it, and a run killed midway."""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def dalda_command() -> list[str]:
    """The installed `dalda` console script beside this Python, else the module it runs."""
    installed = shutil.which("dalda", path=str(Path(sys.executable).parent))
    return [installed] if installed else [sys.executable, "-m", "pipeline_dalda.cli"]


def run_dalda(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Runs `dalda <args>` offline in a subprocess and returns what it printed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([*dalda_command(), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd)


def model_options(tiny_models) -> dict[str, str]:
    """The model options that point `dalda` at the offline model kit."""
    return {
        "pretrained_model_name_or_path": str(tiny_models.stable_diffusion),
        "vae": "",
        "ip_adapter": str(tiny_models.ip_adapter),
        "ip_adapter_weight_name": "ip-adapter_sd15.safetensors",
        "clip_score_model": str(tiny_models.clip_scorer),
    }


def kill_midway(command: Sequence[str], ready: Callable[[], bool], env: dict[str, str] | None = None) -> None:
    """Starts `command` and SIGKILLs it as soon as `ready()` holds, as a crash or an out-of-memory kill would.

    Fails if the command ends on its own first (it finished before it could be interrupted).
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    process = subprocess.Popen(list(command), env=env, stderr=subprocess.DEVNULL)
    try:
        while not ready():
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
