#!/usr/bin/env python3
"""A client ladder did not write: discovers the coordinator's services through gRPC
server reflection, probes the standard health service, and calls RunService.ListRuns
and RunService.Leaderboard with messages built from the reflected descriptors (no
generated code, no .proto files).

    pip install grpcio grpcio-reflection grpcio-health-checking protobuf
    python3 clients/python/reflect.py 127.0.0.1:7070 [SWEEP_ID [PROJECT]]

Prints one JSON document: the services, the health status, the runs and the
leaderboard of the project.

The ladder calls carry `authorization: Bearer TOKEN`: $LADDER_TOKEN, else, as the ladder
CLI does, the admin token that a coordinator of this user started without --auth left in
its runtime file ($XDG_RUNTIME_DIR/ladder/coordinator-HOST-PORT.json, else
~/.local/share/ladder/runtime/...). Reflection and health need no token.
"""

import ipaddress
import json
import os
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def reflect(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    def ask(request):
        return next(iter(stub.ServerReflectionInfo(iter([request]))))

    services = [s.name for s in ask(reflection_pb2.ServerReflectionRequest(list_services="")).list_services_response.service]
    pool = descriptor_pool.DescriptorPool()
    seen = set()

    def add(proto, known):
        # Dependencies first, fetched by file name when the server did not send them.
        for dependency in proto.dependency:
            if dependency in seen:
                continue
            if dependency not in known:
                response = ask(reflection_pb2.ServerReflectionRequest(file_by_filename=dependency))
                for raw in response.file_descriptor_response.file_descriptor_proto:
                    fetched = FileDescriptorProto.FromString(raw)
                    known[fetched.name] = fetched
            add(known[dependency], known)
        if proto.name not in seen:
            pool.Add(proto)
            seen.add(proto.name)

    def add_file_containing(symbol):
        response = ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
        protos = [FileDescriptorProto.FromString(raw) for raw in response.file_descriptor_response.file_descriptor_proto]
        known = {p.name: p for p in protos}
        for proto in protos:
            add(proto, known)

    for service in services:
        if service.startswith("ladder."):
            add_file_containing(service)
    return services, pool


def runtime_dir():
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(xdg):
        return os.path.join(xdg, "ladder")
    home = os.environ.get("HOME", "")
    if os.path.isabs(home):
        return os.path.join(home, ".local", "share", "ladder", "runtime")
    return None


def lookup_keys(host, port):
    """The listen addresses whose runtime file may belong to the coordinator at
    HOST:PORT (the same rule as ladder's `local_token::lookup_keys`)."""
    host = host.strip("[]")
    wildcard = ["0.0.0.0", "::"]
    if host.lower() == "localhost":
        ips = ["127.0.0.1", "::1"] + wildcard
    else:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return []
        ips = [str(ip)] + (wildcard if ip.is_loopback else [])
    return [f"{ip}-{port}" for ip in ips]


def process_alive(pid):
    if not os.path.exists("/proc/self"):
        return True
    return os.path.exists(f"/proc/{pid}")


def local_token(address):
    directory = runtime_dir()
    host, _, port = address.rpartition(":")
    if directory is None or not port.isdigit():
        return None
    for key in lookup_keys(host, int(port)):
        try:
            with open(os.path.join(directory, f"coordinator-{key}.json")) as file:
                info = json.load(file)
        except (OSError, ValueError):
            continue
        if process_alive(info.get("pid", 0)) and info.get("token"):
            return info["token"]
    return None


def main():
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7070"
    sweep_id = sys.argv[2] if len(sys.argv) > 2 else ""
    project = sys.argv[3] if len(sys.argv) > 3 else ""
    channel = grpc.insecure_channel(address)
    token = os.environ.get("LADDER_TOKEN", "").strip() or local_token(address)
    metadata = [("authorization", f"Bearer {token}")] if token else None
    services, pool = reflect(channel)

    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="ladder.v1.RunService")).status

    method = pool.FindServiceByName("ladder.v1.RunService").FindMethodByName("ListRuns")
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        "/ladder.v1.RunService/ListRuns",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    response = call(request_class(sweep_id=sweep_id), metadata=metadata)

    board_method = pool.FindServiceByName("ladder.v1.RunService").FindMethodByName("Leaderboard")
    board_request = message_factory.GetMessageClass(board_method.input_type)
    board_response = message_factory.GetMessageClass(board_method.output_type)
    board_call = channel.unary_unary(
        "/ladder.v1.RunService/Leaderboard",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=board_response.FromString,
    )
    board = board_call(board_request(project=project, limit=10), metadata=metadata)

    print(json.dumps({
        "services": sorted(services),
        "health": health_pb2.HealthCheckResponse.ServingStatus.Name(status),
        "runs": json_format.MessageToDict(response).get("runs", []),
        "leaderboard": json_format.MessageToDict(board),
    }, indent=2))


if __name__ == "__main__":
    main()
