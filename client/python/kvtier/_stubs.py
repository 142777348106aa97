"""Generated protobuf/gRPC stubs for kvtier.v1 (the subpackage kvtier.v1), made on first import.

The .proto files are the single source of truth (proto/kvtier/v1 in the repository, or the directory
named by $KVTIER_PROTO_DIR). They are compiled with grpc_tools into this package's v1/ directory when
missing or stale (a stamp holds the digest of the protos and the grpc_tools version); v1/ is not
committed.
"""
import hashlib
import os
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
_FILES = [os.path.join("kvtier", "v1", n) for n in ("config.proto", "kvtier.proto")]


def _proto_root():
    return os.environ.get("KVTIER_PROTO_DIR") or os.path.normpath(os.path.join(_HERE, "..", "..", "..", "proto"))


def ensure_generated():
    from grpc_tools import protoc
    import grpc_tools

    root = _proto_root()
    digest = hashlib.sha256(grpc_tools.__version__.encode() if hasattr(grpc_tools, "__version__") else b"")
    for f in _FILES:
        with open(os.path.join(root, f), "rb") as fh:
            digest.update(fh.read())
    stamp = os.path.join(_HERE, "v1", ".stamp")
    want = digest.hexdigest()
    if os.path.exists(stamp) and open(stamp).read() == want:
        return
    out = tempfile.mkdtemp(prefix="kvtier-stubs-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{root}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
                     + _FILES)
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}) on {root}")
    os.makedirs(os.path.join(_HERE, "v1"), exist_ok=True)
    for name in os.listdir(os.path.join(out, "kvtier", "v1")):
        os.replace(os.path.join(out, "kvtier", "v1", name), os.path.join(_HERE, "v1", name))
    open(os.path.join(_HERE, "v1", "__init__.py"), "a").close()
    with open(stamp, "w") as fh:
        fh.write(want)
