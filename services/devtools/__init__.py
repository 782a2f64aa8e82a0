"""Development tooling: embedded PostgreSQL and NATS servers, protobuf code generation.

Used by `eventfn up`, the tests and the benchmarks; never by a service's own code, so a
production image of a service installs neither the embedded servers nor protoc.
"""
