"""executor: worker pools that reserve jobs over the beanstalkd protocol and run each one as an
isolated Linux process.

Theory of operation. A worker (`worker.py`) is N slots, each a greenstalk connection. A slot
reserves a job, parses its body into a `JobSpec` (`cluster/jobspec.py`, strict), and turns it into a
frozen `Plan` (`plan.py`, pure: namespaces, mounts, cgroup limits, argv, env, uid). The runner
(`runner.py`) creates the job's cgroup with every limit (`cgroups.py`, `cgroup_backends.py`;
v1 or v2, detected at start) and forks the launcher; the sandbox (`sandbox.py`, syscalls through
`linux.py`) joins the cgroup, unshares the namespaces, and forks an init that builds the root
filesystem, pivots into it and runs the command unprivileged. The slot waits on the launcher's
pidfd and a status pipe, touching the job every third of its TTR, then deletes, releases or
buries it and records the outcome (`jobfiles.py`: per-job logs, results, state for
`beanraft logs` and `beanraft stop`).

Rules:
- Isolation fails closed: a namespace, mount or limit that cannot be set up fails the job with
  a message; nothing runs unlimited or unconfined.
- Nothing of the worker leaks into a job: not its environment, not its file descriptors, not its
  capabilities, not its memory (the launcher and init are not dumpable).
- Waiting is on events (pidfd, pipe EOF, cgroup.events), never a fixed sleep.
- Dependencies point inward: `plan` and `spec` import nothing that does I/O.
"""
