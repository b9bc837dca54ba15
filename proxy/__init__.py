"""The beanstalkd protocol in front of a JobQueue: any beanstalkd client talks to beanraft.

Theory of operation. Bytes from a client go into ``protocol.BeanstalkConnection``, a sans-I/O
codec that reproduces beanstalkd 1.12's parser byte for byte and yields ``events``. The
connection's ``session.Session`` turns each event into a state-machine command carrying the
connection's ``client_id``, applies it through ``jobqueue.interface.JobQueue`` (in-process
``LocalQueue`` or the cluster's ``RemoteQueue``), and ``render`` turns the reply into
beanstalkd's exact reply bytes. ``server`` is the thin asyncio layer: sockets, backpressure,
the proxy's identity and lease. ``cli`` is ``beanraft proxy``.

Rules:
- The codec does no I/O and reads no clock; beanstalkd's limits are named constants there.
- A connection's commands are handled one at a time, in order; a blocked connection (waiting
  reserve, a client that does not read) never blocks another.
- Wake-ups reach a waiting reserve only through ``JobQueue.subscribe``, matched by client id
  and request id; put and reserve carry request ids, so retries are never applied twice.
- Per-connection state lives in the machine; the proxy mirrors the used tube and watch list
  only to fill commands and to rebuild a session the machine dropped.
"""
