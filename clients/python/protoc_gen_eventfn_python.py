#!/usr/bin/env python3
"""A protoc/buf plugin: Python messages, gRPC stubs and typing stubs for eventfn's protos,
under one package of your choosing (default `eventfn_api`) instead of a top-level `eventfn`.

protoc's Python generators name modules after the proto files (`eventfn/registry/v1/...` ->
`eventfn.registry.v1`), a top-level package that would collide with anything else named
`eventfn`. This plugin runs them (from `grpcio-tools`, and `mypy-protobuf` for the typing
stubs when it is installed) on the request buf sends, then moves the modules under the
package and rewrites their imports of each other. googleapis imports (`google.rpc`, ...)
stay as they are: `googleapis-common-protos` provides them.

Options (buf.gen.yaml `opt`): `package=NAME` (default `eventfn_api`).
Needs: `pip install grpcio-tools googleapis-common-protos` (+ `mypy-protobuf` for .pyi).
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2

DEFAULT_PACKAGE = "eventfn_api"
PROTO_ROOT = "eventfn"  # the proto files' top directory, replaced by the package


def _options(parameter: str) -> dict[str, str]:
    out = {}
    for item in filter(None, parameter.split(",")):
        key, _, value = item.partition("=")
        out[key.strip()] = value.strip()
    return out


def _mypy_plugins() -> list[str]:
    """Return protoc flags for mypy-protobuf's generators when they are installed."""
    flags = []
    for name, out_flag in (("protoc-gen-mypy", "mypy"), ("protoc-gen-mypy_grpc", "mypy_grpc")):
        found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
        if found:
            flags += [f"--plugin={name}={found}", f"--{out_flag}_out={{out}}"]
    return flags


def rewrite(text: str, package: str) -> str:
    """Point imports and module references of the generated code at `package`."""
    text = re.sub(rf"^(\s*)from {PROTO_ROOT}\.", rf"\1from {package}.", text, flags=re.M)
    # Module references (`eventfn.registry.v1.resources_pb2`); proto names never hold `_pb2`.
    return re.sub(rf"\b{PROTO_ROOT}\.((?:\w+\.)*\w+_pb2(?:_grpc)?)\b", rf"{package}.\1", text)


def generate(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    """Generate the files of `request.file_to_generate`."""
    from grpc_tools import protoc

    package = _options(request.parameter).get("package", DEFAULT_PACKAGE)
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    with tempfile.TemporaryDirectory() as tmp:
        descriptors = Path(tmp) / "descriptors.binpb"
        descriptors.write_bytes(
            descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString()
        )
        out = Path(tmp) / "out"
        out.mkdir()
        args = [
            "protoc",
            f"--descriptor_set_in={descriptors}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *[flag.format(out=out) for flag in _mypy_plugins()],
            *request.file_to_generate,
        ]
        if protoc.main(args) != 0:
            response.error = "grpc_tools.protoc failed; see its messages above"
            return response
        files: dict[str, str] = {}
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            relative = path.relative_to(out).as_posix()
            head, _, rest = relative.partition("/")
            if head != PROTO_ROOT:
                continue
            files[f"{package}/{rest}"] = rewrite(path.read_text(), package)
    packages = {str(Path(name).parent) for name in files}
    for directory in sorted(packages):
        parts = Path(directory).parts
        for depth in range(1, len(parts) + 1):
            files.setdefault(str(Path(*parts[:depth]) / "__init__.py"), "")
        files.setdefault(str(Path(directory) / "py.typed"), "")
    for name, content in sorted(files.items()):
        response.file.add(name=name, content=content)
    return response


def main() -> None:
    """Read a CodeGeneratorRequest on stdin, write the CodeGeneratorResponse on stdout."""
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    sys.stdout.buffer.write(generate(request).SerializeToString())


if __name__ == "__main__":
    main()
