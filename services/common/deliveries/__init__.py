"""Delivery records, owned here: the tables (`tables`), the writes executors and routers make
(`recorder`) and the reads the executor's delivery RPCs serve (`reads`)."""
