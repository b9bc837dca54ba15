"""gRPC metadata beanraft's services send beyond the protos' messages."""

# A node that is not the leader names the leader's gRPC address in this trailing metadata
# key of an UNAVAILABLE answer, so a client goes straight there next.
LEADER_HINT_KEY = "leader-grpc-addr"
