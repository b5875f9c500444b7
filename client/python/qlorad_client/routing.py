"""Which pod of a qlorad StatefulSet holds a tenant: the same rendezvous hashing as qloractl
(client/connection.h): the score of (tenant, ordinal) is the splitmix64 finalizer of the 64-bit
FNV-1a hash of "<tenant>/<ordinal>", and the highest score wins (the lowest ordinal on a tie).
"""

_MASK = (1 << 64) - 1


def _score(key):
    h = 0xCBF29CE484222325
    for byte in key.encode():
        h = ((h ^ byte) * 0x100000001B3) & _MASK
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
    return h ^ (h >> 31)


def pod_for_tenant(tenant, replicas):
    """The ordinal in [0, replicas) of the pod that holds `tenant`."""
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    best, best_score = 0, -1
    for i in range(replicas):
        s = _score(f"{tenant}/{i}")
        if s > best_score:
            best, best_score = i, s
    return best


def statefulset_target(tenant, replicas, statefulset="qlorad", service=None,
                       namespace="default", port=50051):
    """host:port of the tenant's pod, for Client(target=...)."""
    service = service or f"{statefulset}-headless"
    ordinal = pod_for_tenant(tenant, replicas)
    return f"{statefulset}-{ordinal}.{service}.{namespace}.svc.cluster.local:{port}"
