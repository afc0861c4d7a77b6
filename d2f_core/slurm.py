"""Two traps of snakemake-executor-plugin-slurm (2.x) closed for this workflow's cluster runs (Snakefile `onstart`).

1. A status command that cannot work (`sacct` where the cluster keeps no accounting database) fails only at debug
   level, and when every query of a status cycle fails the plugin drops the jobs it could not query, so Snakemake
   waits for them forever. Here the command is tried once before any job is submitted (an error naming the fix),
   and the run ends with the command's own error once `slurm-status-attempts` queries in a row have failed.
2. Without an account the plugin guesses one from `sacct` (and crashes where `sacct` is missing); here no account
   means none is passed, so `sbatch` uses the cluster's default (or $SBATCH_ACCOUNT). A given account stays the
   plugin's to check (`sacctmgr`).
"""

from __future__ import annotations

import shlex
import subprocess

from snakemake_interface_common.exceptions import WorkflowError

PROFILE = "workflow/profiles/slurm/config.yaml"
FIX = (f"Where the cluster keeps no job accounting (sacct: 'accounting storage is disabled'), set "
       f"`slurm-status-command: squeue` in {PROFILE} (squeue must list finished jobs: MinJobAge at least 3x "
       f"slurm-init-seconds-before-status-checks); where it does, check `sacct` works for you.")


def guard(workflow) -> None:
    """Applied when the run's executor is the slurm plugin; a no-op for any other (a job step inside a job)."""
    if workflow.executor_plugin is None or workflow.executor_plugin.name != "slurm":
        return
    import snakemake_executor_plugin_slurm as plugin

    settings = workflow.executor_settings
    command = status_command(plugin, settings)
    failed = run(command)
    if failed:
        raise WorkflowError(f"the Slurm status command fails here, so no job could be tracked: `{command}`: "
                            f"{failed}\n{FIX}")
    plugin.query_job_status = bounded(plugin.query_job_status, settings.status_attempts)
    plugin.Executor.get_account_arg = without_guessing(plugin.Executor.get_account_arg)


def status_command(plugin, settings) -> str:
    """The query the plugin will run: its own choice, including its fallback from squeue to sacct when MinJobAge is
    too short for squeue to still list a finished job."""
    name = settings.status_command
    min_age = plugin.get_min_job_age()
    if name == "squeue" and (min_age is None or min_age < 3 * settings.init_seconds_before_status_checks) \
            and plugin.is_query_tool_available("sacct"):
        name = "sacct"
    if name == "sacct" and not plugin.is_query_tool_available("sacct"):
        name = "squeue"
    return (plugin.query_job_status_sacct if name == "sacct" else plugin.query_job_status_squeue)("d2f-preflight")


def run(command: str) -> str | None:
    """None when the command works, else what it said."""
    try:
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


def bounded(query, attempts: int):
    """`query_job_status` that raises (ending the run, the reason shown) at the `attempts`-th failure in a row: the
    plugin would lose its jobs when the cycle's last attempt fails."""
    failures = 0

    async def query_job_status(cmd, logger):
        nonlocal failures
        status, duration = await query(cmd, logger)
        failures = failures + 1 if status is None else 0
        if failures >= attempts:
            raise WorkflowError(f"{failures} Slurm status queries in a row failed; the submitted jobs may still run "
                                f"(squeue --me). `{cmd}`: {run(cmd) or 'works again now'}\n{FIX}")
        return status, duration

    return query_job_status


def without_guessing(get_account_arg):
    """The plugin's `get_account_arg`, passing no `-A` when the job names no account."""

    def account_arg(self, job):
        if not job.resources.get("slurm_account"):
            yield ""
            return
        yield from get_account_arg(self, job)

    return account_arg
