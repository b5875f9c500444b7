"""Python client for the qlorad gRPC API (proto/qlorad/v1).

    from qlorad_client import Client, QloradError
    with Client("127.0.0.1:50051", token="...") as c:
        print(c.get_limits())

The stubs are generated from the protos, not committed: on first import, when
qlorad_client/_gen is missing or older than the protos beside this checkout, they are generated
by client/python/generate.py (needs protoc + grpc_python_plugin, or grpcio-tools). The message
modules are re-exported here: models_pb2, datasets_pb2, jobs_pb2, adapters_pb2, inference_pb2,
limits_pb2, devices_pb2.
"""

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_GEN = _HERE / "_gen"
_GENERATE_PY = _HERE.parent / "generate.py"


def _debian_dist_packages_fallback():
    """Lets an interpreter outside Debian's (pyenv, a venv) use the apt-installed grpcio.

    Only when grpc does not import otherwise, and only if Debian's build of it is for this
    interpreter's ABI (its extension's suffix is one this interpreter loads).
    """
    try:
        import grpc  # noqa: F401
        import google.protobuf  # noqa: F401
        return
    except ImportError:
        pass
    dist = Path("/usr/lib/python3/dist-packages")
    cython = dist / "grpc" / "_cython"
    if not cython.is_dir() or str(dist) in sys.path:
        return
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    if any(f.name.startswith("cygrpc.") and any(f.name.endswith(s) for s in suffixes)
           for f in cython.iterdir()):
        sys.path.append(str(dist))


def _load_generator():
    spec = importlib.util.spec_from_file_location("_qlorad_client_generate", _GENERATE_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ensure_stubs():
    """Generates _gen when it is missing or was made from other protos than those in the checkout."""
    complete = (_GEN / "qlorad" / "v1" / "jobs_pb2_grpc.py").is_file()
    if not _GENERATE_PY.is_file():
        if complete:
            return
        raise ImportError(f"qlorad_client: no generated stubs in {_GEN} and no {_GENERATE_PY} "
                          "to make them")
    gen = _load_generator()
    proto_dir = Path(os.environ.get("QLORAD_PROTO_DIR", gen.DEFAULT_PROTO_DIR))
    if not gen.proto_files(proto_dir):
        if complete:
            return  # no protos here (copied package): use the stubs it came with
        raise ImportError(f"qlorad_client: no generated stubs in {_GEN} and no protos under "
                          f"{proto_dir}")
    if complete and gen.is_current(_GEN, proto_dir):
        return
    try:
        gen.generate(_GEN, proto_dir, quiet=True)
    except (gen.GenerateError, OSError) as e:
        if complete:
            import warnings
            warnings.warn(f"qlorad_client: stubs in {_GEN} may be stale, regenerating failed: {e}")
            return
        raise ImportError(f"qlorad_client: generating the gRPC stubs failed: {e}") from e


_debian_dist_packages_fallback()
_ensure_stubs()

from ._gen.qlorad.v1 import (  # noqa: E402
    adapters_pb2, datasets_pb2, devices_pb2, inference_pb2, jobs_pb2, limits_pb2, models_pb2)
from .client import Client, QloradError, TERMINAL_STATES  # noqa: E402
from .routing import pod_for_tenant, statefulset_target  # noqa: E402

JobState = jobs_pb2.JobState

__all__ = [
    "Client", "QloradError", "JobState", "TERMINAL_STATES", "pod_for_tenant",
    "statefulset_target",
    "adapters_pb2", "datasets_pb2", "devices_pb2", "inference_pb2", "jobs_pb2", "limits_pb2",
    "models_pb2",
]
