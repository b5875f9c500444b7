#!/usr/bin/env python3
"""Generates the Python gRPC stubs of proto/qlorad/v1/*.proto.

    python3 client/python/generate.py [OUT_DIR]     (default: client/python/qlorad_client/_gen)

The output is a package tree OUT_DIR/qlorad/v1/{models,datasets,...}_pb2{,_grpc}.py with an
__init__.py at every level. protoc writes the cross-file imports absolute ("from qlorad.v1 import
jobs_pb2"); they are rewritten relative ("from . import jobs_pb2"), so the tree imports as
qlorad_client._gen.qlorad.v1 without putting anything on sys.path (and as qlorad.v1 when OUT_DIR
itself is on sys.path). OUT_DIR/PROTO_SHA256 records the protos it was made from; the package
regenerates when they change.

Compiler: protoc with the grpc_python_plugin (Debian: protobuf-compiler, protobuf-compiler-grpc),
else `python3 -m grpc_tools.protoc`. The protos use proto3 `optional`, which needs protoc >= 3.15;
Debian 12's python3-grpc-tools bundles protoc 3.5.1 and cannot compile them, hence protoc first.
Standard library only: the qlorad_client package loads this file to generate lazily.
"""

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PROTO_DIR = HERE.parent.parent / "proto"
DEFAULT_OUT_DIR = HERE / "qlorad_client" / "_gen"
PROTO_PACKAGE = "qlorad/v1"
STAMP = "PROTO_SHA256"
# Bump when the layout or the post-processing changes, so old trees get regenerated.
GENERATOR_VERSION = "1"


class GenerateError(RuntimeError):
    pass


def proto_files(proto_dir=DEFAULT_PROTO_DIR):
    return sorted((Path(proto_dir) / PROTO_PACKAGE).glob("*.proto"))


def proto_digest(proto_dir=DEFAULT_PROTO_DIR):
    """Hex SHA-256 over the generator version and the protos' names and contents."""
    h = hashlib.sha256(("generator " + GENERATOR_VERSION + "\n").encode())
    for f in proto_files(proto_dir):
        data = f.read_bytes()
        h.update(f"{f.name} {len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()


def is_current(out_dir=DEFAULT_OUT_DIR, proto_dir=DEFAULT_PROTO_DIR):
    """True when out_dir holds a complete tree made from the protos in proto_dir as they are now."""
    try:
        stamp = (Path(out_dir) / STAMP).read_text().strip()
    except OSError:
        return False
    return stamp == proto_digest(proto_dir)


def _compilers(proto_dir, out):
    """The compiler command lines to try, best first."""
    includes = ["-I", str(proto_dir)]
    outs = ["--python_out=" + str(out), "--grpc_python_out=" + str(out)]
    candidates = []
    protoc = shutil.which("protoc")
    plugin = shutil.which("grpc_python_plugin")
    if protoc and plugin:
        candidates.append([protoc, "--plugin=protoc-gen-grpc_python=" + plugin] + includes + outs)
    try:
        import grpc_tools  # noqa: F401  (only to learn whether it exists and where its protos are)
        from importlib import resources
        well_known = str(resources.files("grpc_tools") / "_proto")
        candidates.append([sys.executable, "-m", "grpc_tools.protoc"] + includes
                          + ["-I", well_known] + outs)
    except ImportError:
        pass
    return candidates


_IMPORT_FROM = re.compile(r"^from qlorad\.v1 import ", re.M)
_IMPORT_PLAIN = re.compile(r"^import qlorad\.v1\.(\w+) as ", re.M)


def _make_relative(path):
    text = path.read_text()
    text = _IMPORT_FROM.sub("from . import ", text)
    text = _IMPORT_PLAIN.sub(r"from . import \1 as ", text)
    if re.search(r"^\s*(from|import)\s+qlorad\b", text, re.M):
        raise GenerateError(f"{path.name}: an import of qlorad was left absolute")
    path.write_text(text)


def generate(out_dir=DEFAULT_OUT_DIR, proto_dir=DEFAULT_PROTO_DIR, quiet=False):
    """(Re)generates the stubs into out_dir, replacing it whole; returns out_dir.

    Builds in a sibling temporary folder and renames it into place, so a reader never sees a
    half-written tree and two processes generating at once both end with a complete one.
    """
    out_dir = Path(out_dir).resolve()
    proto_dir = Path(proto_dir).resolve()
    protos = proto_files(proto_dir)
    if not protos:
        raise GenerateError(f"no .proto files under {proto_dir / PROTO_PACKAGE}")
    digest = proto_digest(proto_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="." + out_dir.name + ".", dir=out_dir.parent))
    try:
        failures = []
        for cmd in _compilers(proto_dir, tmp):
            proc = subprocess.run(cmd + [str(p) for p in protos], capture_output=True, text=True)
            if proc.returncode == 0:
                break
            failures.append(f"{' '.join(cmd[:3])}...: {proc.stderr.strip() or proc.returncode}")
            for child in tmp.iterdir():  # leave nothing from the failed attempt
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        else:
            if not failures:
                raise GenerateError(
                    "no proto compiler: install protoc and grpc_python_plugin (Debian: "
                    "protobuf-compiler protobuf-compiler-grpc) or grpcio-tools")
            raise GenerateError("proto compilation failed:\n  " + "\n  ".join(failures))
        pkg = tmp / PROTO_PACKAGE
        for d in (tmp, tmp / "qlorad", pkg):
            (d / "__init__.py").touch()
        for f in pkg.glob("*.py"):
            if f.name != "__init__.py":
                _make_relative(f)
        (tmp / STAMP).write_text(digest + "\n")

        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix="." + out_dir.name + ".old.", dir=out_dir.parent))
            os.rename(out_dir, old / "tree")
        try:
            os.rename(tmp, out_dir)
        except OSError:
            # Another process put a tree there between our rename and this one: use it if whole.
            if not is_current(out_dir, proto_dir):
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        print(f"generate: {len(protos)} protos -> {out_dir}", file=sys.stderr)
    return out_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", default=str(DEFAULT_OUT_DIR),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--proto-dir", default=str(DEFAULT_PROTO_DIR),
                        help="folder holding qlorad/v1/*.proto (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        generate(args.out_dir, args.proto_dir)
    except (GenerateError, OSError) as e:
        print(f"generate: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
