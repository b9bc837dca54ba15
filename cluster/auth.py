"""Who may call what: one deny-by-default interceptor over every gRPC method of a node.

Theory of operation: the node's gRPC port uses mutual TLS (``api.tls.server_credentials``),
so the TLS handshake already refuses a client without a certificate, with one from another CA or
with an expired one. Every RPC that gets through is then checked here, before its handler runs:

1. The connection must carry a verified client certificate (grpc's auth context
   ``x509_pem_cert``); otherwise UNAUTHENTICATED (for instance a plaintext port with this
   interceptor installed). The certificate is parsed with cryptography and, when the interceptor
   was given the CA, its signature and validity window are checked again.
2. Its role is the subject's OU (``api.tls.role_of``); a certificate with no known role, or
   with several, is denied everything (PERMISSION_DENIED).
3. The method must be listed in ``METHOD_ROLES`` with that role; a method that is not listed is
   denied to everyone, so a new RPC is closed until someone decides who may call it (a test fails
   if a registered service has a method without an entry).

Rules (closing the holes joblet's authorisation had): the check lives in one interceptor, never at
the top of each handler; there is no "any valid certificate" exception for some methods; unknown
roles and unknown methods are denied, and every denial says what was wrong.
"""

from __future__ import annotations

import datetime
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from api.tls import ROLES, ca_paths, common_name_of, role_of

log = structlog.get_logger(__name__)

# Access classes, each a superset of the next: a cluster member or an admin may do anything,
# the proxy and the worker pool apply queue commands, a viewer only reads.
ADMIN: frozenset[str] = frozenset({"admin", "node"})
QUEUE: frozenset[str] = ADMIN | {"proxy", "worker"}
READ: frozenset[str] = QUEUE | {"viewer"}
assert frozenset(ROLES) == READ, "every role must belong to an access class"

# joblet's roles (its API document): an admin runs and stops jobs, a viewer reads them. The
# proxy and the worker pool have no business in the job API: a worker reports through Apply.
JOB_READ: frozenset[str] = ADMIN | {"viewer"}

JSM_SERVICE = "coolbeans.api.v1.JobStateMachine"
JOBLET_SERVICE = "joblet.JobletService"
WORKER_LOGS_SERVICE = "beanraft.worker.v1.WorkerLogs"
CLUSTER_SERVICE = "coolbeans.api.v1.Cluster"
HEALTH_SERVICE = "grpc.health.v1.Health"

# Service -> method -> the roles that may call it. To add an RPC, add its name here under the
# class of caller that needs it; anything not listed is denied.
ACCESS: dict[str, dict[str, frozenset[str]]] = {
    JSM_SERVICE: {
        # Queue calls: they change jobs or wait for them (coolbeans' JobStateMachine).
        "Put": QUEUE,
        "Delete": QUEUE,
        "Reserve": QUEUE,
        "StreamReserveUpdates": QUEUE,
        "CheckClientState": QUEUE,
        "Release": QUEUE,
        "Touch": QUEUE,
        "Bury": QUEUE,
        "Kick": QUEUE,
        "KickN": QUEUE,
        # Reads: peek, stats, list.
        "GetJob": READ,
        "PeekBuried": READ,
        "PeekDelayed": READ,
        "PeekReady": READ,
        "GetStatsJobYaml": READ,
        "GetStatsTubeYaml": READ,
        "GetStatsYaml": READ,
        "ListTubes": READ,
        # beanraft extensions (api/jsm.proto): any encoded queue command (one call, or a
        # stream of calls), and a proxy's resumable wake-up stream.
        "Apply": QUEUE,
        "ApplyStream": QUEUE,
        "StreamWakeups": QUEUE,
    },
    CLUSTER_SERVICE: {
        "Join": ADMIN,
        "Leave": ADMIN,
        "Snapshot": ADMIN,
        "IsNodeLeader": READ,
        # beanraft extensions (api/cluster.proto): status is a read; a snapshot holds every
        # job's body, so only an admin (or a joining node) may stream it.
        "Status": READ,
        "StreamSnapshot": ADMIN,
    },
    JOBLET_SERVICE: {
        "RunJob": ADMIN,
        "StopJob": ADMIN,
        "GetJobStatus": JOB_READ,
        "ListJobs": JOB_READ,
        "ListJobsPage": JOB_READ,
        "GetJobLogs": JOB_READ,
    },
    # Served by workers: a node reads a job's output from the worker that ran it.
    WORKER_LOGS_SERVICE: {"ReadLogs": ADMIN},
    # The standard health service: open to every authenticated peer.
    HEALTH_SERVICE: {"Check": READ, "Watch": READ, "List": READ},
}


def _operation(method: str) -> str:
    """joblet's name of an operation: "/joblet.JobletService/RunJob" -> "run_job"."""
    name = method.rsplit("/", 1)[-1]
    return "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in name).lstrip("_")


def _flatten(access: Mapping[str, Mapping[str, frozenset[str]]]) -> dict[str, frozenset[str]]:
    return {
        f"/{svc}/{name}": roles
        for svc, methods in access.items()
        for name, roles in methods.items()
    }


# Full method name ('/coolbeans.api.v1.JobStateMachine/Put') -> the roles allowed to call it.
METHOD_ROLES: dict[str, frozenset[str]] = _flatten(ACCESS)


@dataclass(frozen=True)
class Denial:
    """Why a call is refused: the status code and a message that says what to do."""

    code: grpc.StatusCode
    message: str


@dataclass(frozen=True)
class _Peer:
    role: str | None
    name: str
    units: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    signed_by_ca: bool


class Authorizer:
    """The decision, separate from grpc's plumbing so both interceptors share it."""

    def __init__(
        self,
        method_roles: Mapping[str, frozenset[str]] = METHOD_ROLES,
        ca_pem: bytes | None = None,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self._method_roles = dict(method_roles)
        self._ca = x509.load_pem_x509_certificate(ca_pem) if ca_pem else None
        self._clock = clock
        # Parsing a certificate costs tens of microseconds; a connection sends thousands of RPCs.
        self._peer = functools.lru_cache(maxsize=256)(self._parse_peer)

    def check(self, method: str, auth_context: Mapping[str, Iterable[bytes]]) -> Denial | None:
        """None if the caller may call ``method``, else the reason it may not."""
        pems = list(auth_context.get("x509_pem_cert", ()))
        if not pems:
            return Denial(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method} needs a verified client certificate and this connection has none: "
                "connect with TLS and a certificate from this cluster's CA "
                "(`beanraft certs issue --role ROLE --name NAME`)",
            )
        peer = self._peer(pems[0])
        if peer is None:
            return Denial(
                grpc.StatusCode.UNAUTHENTICATED, "the client certificate could not be parsed"
            )
        return self._check_validity(peer) or self._check_role(method, peer)

    def _check_validity(self, peer: _Peer) -> Denial | None:
        now = self._clock()
        who = f"client certificate {peer.name!r}"
        fix = "issue a new one with `beanraft certs issue`"
        if not peer.signed_by_ca:
            return Denial(
                grpc.StatusCode.UNAUTHENTICATED, f"{who} was not signed by this cluster's CA: {fix}"
            )
        if now > peer.not_after:
            return Denial(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{who} expired at {peer.not_after:%Y-%m-%d %H:%M:%S} UTC: {fix}",
            )
        if now < peer.not_before:
            return Denial(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{who} is not valid before {peer.not_before:%Y-%m-%d %H:%M:%S} UTC "
                "(check this host's clock)",
            )
        return None

    def _check_role(self, method: str, peer: _Peer) -> Denial | None:
        if peer.role is None:
            return Denial(
                grpc.StatusCode.PERMISSION_DENIED,
                f"client certificate {peer.name!r} has no beanraft role in its OU "
                f"({peer.units or 'none'}): it needs exactly one of {', '.join(ROLES)}",
            )
        allowed = self._method_roles.get(method)
        if allowed is None:
            return Denial(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} is not in beanraft's access table, so it is denied to every role",
            )
        if peer.role not in allowed:
            # joblet's words first, so its clients and users read what they know.
            return Denial(
                grpc.StatusCode.PERMISSION_DENIED,
                f"role {peer.role} is not allowed to perform operation {_operation(method)} "
                f"(certificate {peer.name!r}, {method}); allowed roles: "
                f"{', '.join(sorted(allowed))}",
            )
        return None

    def _parse_peer(self, pem: bytes) -> _Peer | None:
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            return None
        units = ",".join(
            str(a.value)
            for a in cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)
        )
        return _Peer(
            role=role_of(cert),
            name=common_name_of(cert),
            units=units,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            signed_by_ca=self._signed_by_ca(cert),
        )

    def _signed_by_ca(self, cert: x509.Certificate) -> bool:
        if self._ca is None:
            return True  # the TLS handshake verified it against the server's CA
        try:
            cert.verify_directly_issued_by(self._ca)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


class RoleInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Deny-by-default role check for a ``grpc.server`` (threads).

    ``RoleInterceptor.from_tls_dir(tls_dir)`` also re-checks the CA signature of each peer.
    """

    def __init__(self, authorizer: Authorizer | None = None) -> None:
        self._authorizer = authorizer or Authorizer()

    @classmethod
    def from_tls_dir(cls, tls_dir: Path) -> RoleInterceptor:
        return cls(Authorizer(ca_pem=ca_paths(tls_dir)[0].read_bytes()))

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        handler = continuation(handler_call_details)
        authorizer = self._authorizer

        def guard(context: grpc.ServicerContext) -> None:
            denial = authorizer.check(method, context.auth_context())
            if denial is not None:
                _log_denial(method, context.peer(), denial)
                context.abort(denial.code, denial.message)

        if handler is None:
            return _unimplemented_handler(method, guard)
        return _wrap(handler, guard)


class AioRoleInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The same check for a ``grpc.aio.server``."""

    def __init__(self, authorizer: Authorizer | None = None) -> None:
        self._authorizer = authorizer or Authorizer()

    @classmethod
    def from_tls_dir(cls, tls_dir: Path) -> AioRoleInterceptor:
        return cls(Authorizer(ca_pem=ca_paths(tls_dir)[0].read_bytes()))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        authorizer = self._authorizer

        async def guard(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            denial = authorizer.check(method, context.auth_context())
            if denial is not None:
                _log_denial(method, context.peer(), denial)
                await context.abort(denial.code, denial.message)

        if handler is None:
            return _aio_unimplemented_handler(method, guard)
        return _aio_wrap(handler, guard)


def _log_denial(method: str, peer: str, denial: Denial) -> None:
    log.warning(
        "rpc denied", method=method, peer=peer, code=denial.code.name, reason=denial.message
    )


_FACTORIES = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def _rebuild(handler: grpc.RpcMethodHandler, behavior: Callable[..., Any]) -> grpc.RpcMethodHandler:
    kind = (bool(handler.request_streaming), bool(handler.response_streaming))
    factory = _FACTORIES[kind][1]
    return factory(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _behavior(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    kind = (bool(handler.request_streaming), bool(handler.response_streaming))
    behavior: Callable[..., Any] = getattr(handler, _FACTORIES[kind][0])
    return behavior


def _wrap(
    handler: grpc.RpcMethodHandler, guard: Callable[[grpc.ServicerContext], None]
) -> grpc.RpcMethodHandler:
    behavior = _behavior(handler)

    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        guard(context)  # raises (through context.abort) when the call is denied
        return behavior(request, context)

    return _rebuild(handler, guarded)


def _unimplemented_handler(
    method: str, guard: Callable[[grpc.ServicerContext], None]
) -> grpc.RpcMethodHandler:
    # Authenticate even for a method this server does not serve, so an unauthenticated caller
    # cannot probe which methods exist.
    def deny(request: Any, context: grpc.ServicerContext) -> Any:
        guard(context)
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not served here")

    return grpc.unary_unary_rpc_method_handler(deny)


def _aio_wrap(handler: grpc.RpcMethodHandler, guard: Callable[..., Any]) -> grpc.RpcMethodHandler:
    behavior = _behavior(handler)
    if handler.response_streaming:

        async def guarded_stream(request: Any, context: Any) -> Any:
            await guard(context)
            result = behavior(request, context)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    yield response
            else:  # a coroutine that writes with context.write()
                await result

        return _rebuild(handler, guarded_stream)

    async def guarded(request: Any, context: Any) -> Any:
        await guard(context)
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    return _rebuild(handler, guarded)


def _aio_unimplemented_handler(method: str, guard: Callable[..., Any]) -> grpc.RpcMethodHandler:
    async def deny(request: Any, context: Any) -> Any:
        await guard(context)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not served here")

    return grpc.unary_unary_rpc_method_handler(deny)
