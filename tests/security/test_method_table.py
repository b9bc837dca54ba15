"""The access table covers every RPC we serve: a new method without an entry fails here (and
would be denied to everyone at run time)."""

from __future__ import annotations

from cluster.auth import ADMIN, METHOD_ROLES, QUEUE, READ

from .conftest import registered_methods


def test_every_method_of_every_registered_service_has_an_entry() -> None:
    methods = {m.full_name for m in registered_methods()}
    assert "/coolbeans.api.v1.JobStateMachine/Put" in methods  # the api modules were found
    missing = sorted(methods - METHOD_ROLES.keys())
    assert missing == [], f"add these to cluster.auth.ACCESS: {missing}"


def test_the_table_names_no_method_that_does_not_exist() -> None:
    stale = sorted(METHOD_ROLES.keys() - {m.full_name for m in registered_methods()})
    assert stale == [], f"remove or fix these entries in cluster.auth.ACCESS: {stale}"


def test_every_job_state_machine_method_is_open_to_proxy_and_worker() -> None:
    jsm = [name for name in METHOD_ROLES if name.startswith("/coolbeans.api.v1.JobStateMachine/")]
    assert len(jsm) >= 18
    for name in jsm:
        assert {"proxy", "worker", "admin", "node"} <= METHOD_ROLES[name], name


def test_viewer_only_reads() -> None:
    viewer = sorted(
        name.rsplit("/", 1)[1] for name, roles in METHOD_ROLES.items() if "viewer" in roles
    )
    assert viewer == sorted(
        [
            "Check", "GetJob", "GetStatsJobYaml", "GetStatsTubeYaml", "GetStatsYaml",
            "IsNodeLeader", "List", "ListTubes", "PeekBuried", "PeekDelayed", "PeekReady",
            "Status", "Watch",
            # joblet's viewer: status, list and logs
            "GetJobStatus", "ListJobs", "ListJobsPage", "GetJobLogs",
        ]
    )  # fmt: skip


def test_joblet_roles_as_joblet_documents_them() -> None:
    joblet = {
        name.rsplit("/", 1)[1]: roles
        for name, roles in METHOD_ROLES.items()
        if name.startswith("/joblet.JobletService/")
    }
    for name in ("RunJob", "StopJob"):
        assert joblet[name] == ADMIN, name
    for name in ("GetJobStatus", "ListJobs", "ListJobsPage", "GetJobLogs"):
        assert joblet[name] == ADMIN | {"viewer"}, name  # not the proxy, not the worker


def test_access_classes_nest_from_admin_to_read() -> None:
    assert ADMIN < QUEUE < READ
