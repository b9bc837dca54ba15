"""Why a TLS server refused us, in words: gRPC itself only says UNAVAILABLE "Socket closed".

gRPC refuses a missing, foreign or expired client certificate in the TLS handshake, before any RPC
exists, so the role interceptor never gets to answer. A client that gets UNAVAILABLE from a node
can call ``explain_refusal`` to check its own files and do one handshake with Python's ssl module
that names the cause (different CAs, a server that trusts another CA, a plaintext server).
"""

from __future__ import annotations

import socket
import ssl
import tempfile
from pathlib import Path

from api.tls import TlsError, ca_paths, load_identity, write_private


def explain_refusal(address: str, tls_dir: Path, name: str, timeout_s: float = 5.0) -> str | None:
    """Why a server at ``address`` ('HOST:PORT') does not accept us as ``name``, or None if it
    does (or if the cause is not TLS).

    gRPC reports a refused TLS handshake only as UNAVAILABLE "Socket closed"; a client that gets
    that can call this to tell the user what was wrong. It checks our own files first, then
    performs one TLS handshake with Python's ssl module and reads the server's first bytes.
    """
    try:
        ca_pem, cert_pem, key_pem = load_identity(tls_dir, name)
    except TlsError as exc:
        return str(exc)
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory() as tmp:  # ssl loads a chain only from files
        chain = Path(tmp) / "chain.pem"
        write_private(chain, cert_pem + key_pem)
        context.load_cert_chain(chain)
    try:
        with (
            socket.create_connection((host, int(port)), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host) as conn,
        ):
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # HTTP/2's preface
            first = conn.recv(9)
    except ssl.SSLCertVerificationError as exc:
        return (
            f"the server at {address} presented a certificate that {ca_paths(tls_dir)[0]} does not "
            f"verify ({exc.verify_message}): the server and this client use different CAs, or "
            "the server's certificate does not name this host (reissue it with --host)"
        )
    except ssl.SSLError as exc:
        if exc.reason == "WRONG_VERSION_NUMBER":
            return f"the server at {address} does not speak TLS (was it started with --insecure?)"
        return f"the server at {address} ended the TLS handshake: {exc}"
    except ConnectionResetError:
        return f"the server at {address} reset the connection during the TLS handshake"
    except OSError:
        return None  # not a TLS problem: the server is down or unreachable
    if not first:
        return (
            f"the server at {address} refused our client certificate {name}.crt after the "
            "handshake: it trusts another CA (or requires a certificate we do not have)"
        )
    return None
