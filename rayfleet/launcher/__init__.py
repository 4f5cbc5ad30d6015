"""The launcher rayfleet puts around a job's entrypoint: reserve the job's bundles, then run the user's command.

The job is submitted with zero entrypoint resources, so Ray starts this launcher at once. The launcher

1. connects to its own cluster (``ray.init()``; inside a Ray job ``RAY_ADDRESS`` points at it) and reads the gang spec
   (JSON, from ``--spec`` or the ``RAYFLEET_GANG_SPEC`` environment variable)::

       {"bundles": [{"CPU": 1, "GPU": 1, "accelerator_type:A100": 0.001}, ...],
        "strategy": "STRICT_SPREAD", "timeout_s": 30, "driver_bundle": 0}

2. creates a placement group of those bundles and waits up to ``timeout_s`` for it;
3. if it is not ready in time: removes it, prints ``rayfleet: reservation timed out ...`` and exits with
   ``RESERVATION_TIMEOUT_EXIT`` (75). The user's command never ran;
4. if it is ready: prints ``rayfleet: reserved <n> bundles ...`` and runs the user's command (a shell string) in a
   Ray task that holds the driver bundle (so Ray sets ``CUDA_VISIBLE_DEVICES`` as it would for entrypoint GPUs). The
   command's output (stdout and stderr, merged) streams back to the launcher, which prints it into the job's log. The
   launcher exits with the command's exit code.

The task does not run the command itself: it starts the command's *watcher* (``watcher``), which runs the command as
a process group of its own and takes that whole group down (SIGTERM, then SIGKILL) when the command loses its cluster:
when the task's worker dies (however: the watcher holds one end of a socket pair, the *lifeline*, whose other end only
the worker has), when the raylet of its node exits (the Ray session it runs in is gone), or when this launcher exits
while it runs on the same machine (a launcher elsewhere: Ray itself kills a dead driver's workers, and so the lifeline
closes). The launcher, in turn, stops when the process Ray's job supervisor started it under is gone (the head's Ray
processes were killed: Ray itself would leave this driver running for a minute). So a command does not outlive the
attempt that started it, and a dispatcher that runs the job again elsewhere does not run it twice at once. When the
command's shell exits, what it left running in its group is stopped too, as Ray does for an entrypoint.

The user's command finds its reservation through ``rayfleet.launcher.current()`` (environment variables
``RAYFLEET_PLACEMENT_GROUP_ID``, ``RAYFLEET_GANG_SPEC``, ``RAYFLEET_BUNDLE_INDEX``).

The package travels with the job whole (``runtime_env`` ``py_modules``, as ``rayfleet_launcher``), so clusters need
no rayfleet installed: its modules import only the standard library, ``ray`` and one another, never the rest of
rayfleet. Its modules, one role each:

- `spec`: the exit codes, log markers, environment variables and report names below, and the gang spec's parsing;
- `runner`: the launcher in the cluster (``python -m rayfleet_launcher '<command>'``; ``python -m rayfleet.launcher``
  where rayfleet is installed): reserve, wait for the group, run the command under its watcher;
- `watcher`: what takes the command's process group down with its cluster;
- `rendezvous`: a group's stores, its decision rule and a member's side;
- `reservation`: what the user's command reads of its reservation (`current`);
- `packaging`: what a dispatcher calls, `wrap` (the new entrypoint and runtime_env) and the package's build.

Exit codes and log markers a dispatcher can rely on (a marker is a whole line of the job's log):

- ``rayfleet: reserved <n> bundles`` -- the reservation is held and the user's command is about to start;
  from then on the exit code is the command's own (a signal N gives 128 + N).
- ``rayfleet: reservation timed out`` and exit ``RESERVATION_TIMEOUT_EXIT`` (75) -- the group was removed and the
  command never ran. A command may exit 75 itself: only the marker tells the two apart.
- ``rayfleet: launcher error`` and exit ``LAUNCHER_ERROR_EXIT`` (76) -- a bad spec or a failure before the command
  started: the command never ran.
- ``rayfleet: cluster unfit: <why>`` and exit ``LAUNCHER_UNFIT_EXIT`` (78) -- the ``python`` on the cluster's PATH
  cannot import Ray, or cannot connect to its cluster: the command never ran; the dispatcher places the job elsewhere
  and passes the cluster over for launcher jobs (a Python with Ray, of the cluster's version, is the one thing a
  cluster needs).
- ``rayfleet: stopped by signal <n>`` -- the job was stopped (``stop_job``); the launcher stops the command (if it
  had started) and removes the group.
- ``rayfleet: stopped before it started`` / ``... while reserving`` and exit ``STOPPED_EXIT`` (143) -- Ray records
  the job STOPPED although this driver runs: ``stop_job`` came while the job was PENDING, which sends no signal. The
  command never ran (the launcher reads the job's record before reserving and before the command starts).
- ``rayfleet: orphaned`` -- the process that started the launcher (the shell of Ray's job supervisor) is gone, so is
  the supervisor: the launcher stops as for ``stop_job`` (the line ``rayfleet: stopped by signal 15`` follows), and
  exits at the latest ``_ORPHAN_EXIT_S`` (15) seconds later. Nobody may read the log by then.
- ``rayfleet: command lost`` and exit ``COMMAND_LOST_EXIT`` (77) -- the task that ran the command died (its node
  died, for instance), or the command's watcher stopped it because the raylet of its node exited: the command
  started and may or may not have finished; its watcher stops whatever of it is left (a line
  ``rayfleet: watcher: ...``, when the log still gets it).

The launcher's report to the dispatcher (version ``REPORT_VERSION``), read through Ray's state API without fetching
logs: the placement group is named ``rayfleet:<submission id>`` (created: the reservation is held; its bundles name
the nodes), and the task that runs the command is named ``rayfleet:<submission id>:command`` (it exists once the
reservation is held and, for a group member, the group said go: the command starts).

A job can be a member of a group (``"group"`` in the spec, see docs/groups.md): then no member runs its command until
every member has reserved. Between "placement group ready" and "run the command" the launcher writes
``reserved-<member>`` into the group's rendezvous directory and waits for the group's one ``decision`` (``go`` or
``abort``), made once by an exclusive create; it prints ``rayfleet: group member reserved ...`` then either
``rayfleet: group go ...`` (and runs the command as above) or ``rayfleet: group aborted: <why>`` and exits
``RESERVATION_TIMEOUT_EXIT`` (75) without running it.
"""

from .packaging import merge_runtime_env, package_path, shipped_modules, wrap
from .rendezvous import (
    ABORT,
    DECISION_FILE,
    GO,
    PROPOSE_ABORT,
    PROPOSE_GO,
    RESERVED_PREFIX,
    WAIT,
    WITHDRAW,
    FsspecStore,
    GroupDecision,
    LocalStore,
    Rendezvous,
    RendezvousError,
    next_action,
    open_store,
    settle,
)
from .reservation import Reservation, current, reserved
from .runner import command_env, main, raylet_pid, reserve_and_run, run_command
from .spec import (
    BUNDLE_INDEX_ENV,
    COMMAND_LOST_EXIT,
    DEFAULT_GROUP_POLL_S,
    DEFAULT_TIMEOUT_S,
    ERROR_MARKER,
    GROUP_ABORTED_MARKER,
    GROUP_GO_MARKER,
    GROUP_RESERVED_MARKER,
    LAUNCHER_ERROR_EXIT,
    LAUNCHER_UNFIT_EXIT,
    LOST_MARKER,
    MARKER,
    ORPHANED_MARKER,
    PACKAGE,
    PLACEMENT_GROUP_ENV,
    REPORT_KEY,
    REPORT_VERSION,
    RESERVATION_TIMEOUT_EXIT,
    RESERVED_MARKER,
    SPEC_ENV,
    STOPPED_EXIT,
    STOPPED_MARKER,
    STRATEGIES,
    TIMEOUT_MARKER,
    UNFIT_MARKER,
    SpecError,
    command_task_name,
    is_remote_uri,
    parse_group,
    parse_spec,
    placement_group_name,
    task_options,
)

__all__ = [
    "ABORT",
    "BUNDLE_INDEX_ENV",
    "COMMAND_LOST_EXIT",
    "DECISION_FILE",
    "DEFAULT_GROUP_POLL_S",
    "DEFAULT_TIMEOUT_S",
    "ERROR_MARKER",
    "GO",
    "GROUP_ABORTED_MARKER",
    "GROUP_GO_MARKER",
    "GROUP_RESERVED_MARKER",
    "LAUNCHER_ERROR_EXIT",
    "LAUNCHER_UNFIT_EXIT",
    "LOST_MARKER",
    "MARKER",
    "ORPHANED_MARKER",
    "PACKAGE",
    "PLACEMENT_GROUP_ENV",
    "PROPOSE_ABORT",
    "PROPOSE_GO",
    "REPORT_KEY",
    "REPORT_VERSION",
    "RESERVATION_TIMEOUT_EXIT",
    "RESERVED_MARKER",
    "RESERVED_PREFIX",
    "SPEC_ENV",
    "STOPPED_EXIT",
    "STOPPED_MARKER",
    "STRATEGIES",
    "TIMEOUT_MARKER",
    "UNFIT_MARKER",
    "WAIT",
    "WITHDRAW",
    "FsspecStore",
    "GroupDecision",
    "LocalStore",
    "Rendezvous",
    "RendezvousError",
    "Reservation",
    "SpecError",
    "command_env",
    "command_task_name",
    "current",
    "is_remote_uri",
    "main",
    "merge_runtime_env",
    "next_action",
    "open_store",
    "package_path",
    "parse_group",
    "parse_spec",
    "placement_group_name",
    "raylet_pid",
    "reserve_and_run",
    "reserved",
    "run_command",
    "settle",
    "shipped_modules",
    "task_options",
    "wrap",
]
